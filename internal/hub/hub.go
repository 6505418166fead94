// Package hub is a node's local hub: WebSocket clients, the rooms they joined, and
// a bounded send queue per client.
//
// The hub is usable as soon as New returns: its lifetime context, maps and
// metrics are made there, so a connection served before Run works like any
// other. Run marks the hub running and, when its context ends, stops it: every
// connection still open is cut, and Run waits for every Serve to return. Serve
// calls made after that are refused with close code 1013.
//
// Nothing in the hub waits on a goroutine that may be gone: registering and
// unregistering a client take a mutex, never a channel send, so a client's
// teardown cannot block whether or not Run is still running. Broadcasting never
// blocks on a client: a client whose queue is full is cut off with 4000.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Broker carries messages to the other nodes. pubsub.Memory and pubsub.Redis
// implement it.
type Broker interface {
	// Publish hands payload to the cluster; it returns once the broker took it.
	Publish(ctx context.Context, room string, payload []byte) error
	// Subscribe and Unsubscribe record this node's interest in a room. They
	// never block; the broker makes the subscription in the background.
	Subscribe(room string)
	Unsubscribe(room string)
	// WaitSubscribed blocks until room's subscription is live, or ctx ends.
	WaitSubscribed(ctx context.Context, room string) error
}

var (
	_ Broker      = (*pubsub.Memory)(nil)
	_ Broker      = (*pubsub.Redis)(nil)
	_ pubsub.Sink = (*Hub)(nil)
)

// Authenticator verifies a connection's token. auth.Verifier implements it.
type Authenticator interface {
	Verify(token string) (*auth.Grant, error)
}

var _ Authenticator = (*auth.Verifier)(nil)

// Close codes of DESIGN.md that the hub sends.
const (
	StatusSlowConsumer websocket.StatusCode = 4000
	StatusRateLimited  websocket.StatusCode = 4001
)

// Config holds the hub's settings. Zero values take the defaults noted.
type Config struct {
	// NodeID names this node in the cluster; it must not contain '\n'.
	NodeID string
	// SendQueue is how many messages may wait for a client before it counts as
	// slow and is cut off (default 256).
	SendQueue int
	// MaxMessageBytes is the largest frame a client may send (default 65536).
	MaxMessageBytes int64
	// WriteTimeout bounds every write to a socket (default 10s).
	WriteTimeout time.Duration
	// WriteCoalesce, when positive, holds a client's first queued message that
	// long before writing, so the messages that follow go out in the same
	// frame: fewer syscalls for busy rooms, at most that much more latency.
	WriteCoalesce time.Duration
	// PingInterval is how often an idle connection is pinged; a ping not
	// answered within WriteTimeout cuts the connection (default 25s; negative
	// turns keepalive off).
	PingInterval time.Duration
	// BrokerTimeout bounds how long a publish or subscribe waits for the broker
	// (default 5s).
	BrokerTimeout time.Duration
	// Authenticator verifies connection tokens; nil runs the hub open: every
	// client may subscribe and publish to every room.
	Authenticator Authenticator
	// AuthTimeout is how long a connection may stay unauthenticated before it
	// is closed with 1008 (default 10s).
	AuthTimeout time.Duration
	// ClientRate is how many requests per second a client may send, with
	// bursts of ClientBurst; 0 turns the limit off. Over it a request gets
	// rate_limited; more than ClientBurst rejections within 10s closes the
	// connection with 4001.
	ClientRate  float64
	ClientBurst int
	// MaxRoomsPerClient bounds the rooms one connection is in (default 128).
	MaxRoomsPerClient int
	// Logger receives the hub's logs (default: discarded).
	Logger *slog.Logger
	// Registerer receives the hub's metrics (default: not registered).
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.SendQueue <= 0 {
		c.SendQueue = 256
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 65536
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval == 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = 10 * time.Second
	}
	if c.ClientBurst <= 0 {
		c.ClientBurst = max(1, int(c.ClientRate))
	}
	if c.MaxRoomsPerClient <= 0 {
		c.MaxRoomsPerClient = 128
	}
	if c.BrokerTimeout <= 0 {
		c.BrokerTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

type state int

const (
	stateNew state = iota
	stateRunning
	stateStopped
)

// Hub holds a node's clients and rooms. All methods may be called concurrently.
type Hub struct {
	cfg     Config
	log     *slog.Logger
	broker  Broker
	metrics *metrics
	// prefix starts every payload this node publishes: its node id and '\n', so
	// that the node can recognise, and drop, its own messages coming back.
	prefix []byte

	// ctx is the hub's lifetime: made in New, canceled when Run stops the hub.
	// Every read and write of every client runs under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.RWMutex // guards the fields below, and every client's rooms
	state    state
	draining bool // Drain began: new connections are closed with 1012
	clients  map[*Client]struct{}
	rooms    map[string]*room
	serving  sync.WaitGroup // one per registered client; Run waits on it
	empty    chan struct{}  // closed and replaced when the last client leaves
}

// room is the set of local members of one room, guarded by Hub.mu.
type room struct {
	name    string
	members []*Client
}

// New returns a hub that is ready to serve connections.
func New(cfg Config, broker Broker) (*Hub, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("hub: empty node id")
	}
	for i := 0; i < len(cfg.NodeID); i++ {
		if cfg.NodeID[i] == '\n' {
			return nil, errors.New("hub: node id contains a newline")
		}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "hub"),
		broker:  broker,
		metrics: m,
		prefix:  append([]byte(cfg.NodeID), '\n'),
		ctx:     ctx,
		cancel:  cancel,
		clients: make(map[*Client]struct{}),
		rooms:   make(map[string]*room),
		empty:   make(chan struct{}),
	}
	return h, nil
}

// Run marks the hub running and blocks until ctx ends. Then it stops the hub:
// later Serve calls are refused, every open connection is cut, and Run returns
// once every Serve has returned. Connections served before Run are kept.
// Run may be called once.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.state != stateNew {
		h.mu.Unlock()
		return errors.New("hub: Run called twice")
	}
	h.state = stateRunning
	h.mu.Unlock()

	<-ctx.Done()

	h.mu.Lock()
	h.state = stateStopped
	h.mu.Unlock()
	h.cancel()
	h.Cut() // close handshakes still waiting on peers end now
	h.serving.Wait()
	return nil
}

// Running reports whether Run is running and the hub has not stopped.
func (h *Hub) Running() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.state == stateRunning
}

// Clients returns how many clients are connected.
func (h *Hub) Clients() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// Rooms returns how many rooms have at least one local member.
func (h *Hub) Rooms() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.rooms)
}

// WaitEmpty blocks until the hub has no client and no room, or ctx ends.
func (h *Hub) WaitEmpty(ctx context.Context) error {
	for {
		h.mu.RLock()
		n, empty := len(h.clients), h.empty
		h.mu.RUnlock()
		if n == 0 {
			return nil
		}
		select {
		case <-empty:
		case <-ctx.Done():
			return fmt.Errorf("hub: %d clients still connected: %w", n, ctx.Err())
		}
	}
}

// register adds c. It refuses with the close code to send once the hub drains
// or has stopped.
func (h *Hub) register(c *Client) (refuse websocket.StatusCode) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == stateStopped {
		return websocket.StatusTryAgainLater
	}
	if h.draining {
		return websocket.StatusServiceRestart
	}
	h.clients[c] = struct{}{}
	h.serving.Add(1)
	h.metrics.connections.Inc()
	return 0
}

// unregister removes c from the hub and from every room it joined. It takes
// the hub's mutex and nothing else, so it returns at once, before and after
// Run.
func (h *Hub) unregister(c *Client) {
	h.mu.Lock()
	if _, ok := h.clients[c]; !ok {
		h.mu.Unlock()
		return
	}
	for _, r := range c.rooms {
		h.removeMemberLocked(r, c)
	}
	c.rooms = nil
	delete(h.clients, c)
	if len(h.clients) == 0 {
		close(h.empty)
		h.empty = make(chan struct{})
	}
	h.mu.Unlock()
	h.metrics.connections.Dec()
	h.serving.Done()
}

// join adds c to the room name. It reports whether c was not a member yet.
func (h *Hub) join(c *Client, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; !ok {
		return false
	}
	for _, r := range c.rooms {
		if r.name == name {
			return false
		}
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{name: name}
		h.rooms[name] = r
		h.metrics.rooms.Inc()
		h.broker.Subscribe(name)
	}
	r.members = append(r.members, c)
	c.rooms = append(c.rooms, r)
	return true
}

// leave removes c from the room name. It reports whether c was a member.
func (h *Hub) leave(c *Client, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, r := range c.rooms {
		if r.name == name {
			h.removeMemberLocked(r, c)
			last := len(c.rooms) - 1
			c.rooms[i] = c.rooms[last]
			c.rooms[last] = nil
			c.rooms = c.rooms[:last]
			return true
		}
	}
	return false
}

// removeMemberLocked takes c out of r.members, and drops r when it empties.
func (h *Hub) removeMemberLocked(r *room, c *Client) {
	for i, m := range r.members {
		if m == c {
			last := len(r.members) - 1
			r.members[i] = r.members[last]
			r.members[last] = nil
			r.members = r.members[:last]
			break
		}
	}
	if len(r.members) == 0 {
		delete(h.rooms, r.name)
		h.metrics.rooms.Dec()
		h.broker.Unsubscribe(r.name)
	}
}

// Publish sends data, compact JSON without a newline, to every member of room
// on every node. It returns once the broker has taken the message; members on
// this node have it queued by then. room must be a valid room name.
func (h *Hub) Publish(ctx context.Context, room string, data []byte) error {
	// One buffer holds the payload for the broker and, after the prefix, the
	// frame every local member is sent: no copy per recipient.
	buf := make([]byte, 0, len(h.prefix)+wire.MessageLen(room, data))
	buf = append(buf, h.prefix...)
	buf = wire.AppendMessage(buf, room, data)
	ctx, cancel := context.WithTimeout(ctx, h.cfg.BrokerTimeout)
	defer cancel()
	if err := h.broker.Publish(ctx, room, buf); err != nil {
		h.metrics.publishFailures.Inc()
		return fmt.Errorf("hub: publish to %q: %w", room, err)
	}
	h.metrics.published.Inc()
	h.broadcast(room, buf[len(h.prefix):])
	return nil
}

// Deliver takes a payload another node published to room, and queues it for
// every local member. It drops this node's own payloads, which its members
// already have. It never blocks.
func (h *Hub) Deliver(room string, payload string) {
	origin, frame, ok := strings.Cut(payload, "\n")
	if !ok {
		h.metrics.badPayloads.Inc()
		return
	}
	if origin == h.cfg.NodeID {
		return
	}
	h.broadcast(room, []byte(frame)) // one copy, shared by every member
}

// Gap tells the members of rooms that messages may have been lost.
func (h *Hub) Gap(rooms []string) {
	for _, name := range rooms {
		h.broadcast(name, wire.AppendGap(nil, name))
	}
}

// broadcast queues frame for every local member of room. frame is shared and
// must not change afterwards.
func (h *Hub) broadcast(room string, frame []byte) {
	h.mu.RLock()
	r := h.rooms[room]
	var n int
	if r != nil {
		for _, c := range r.members {
			if c.send(frame) {
				n++
			}
		}
	}
	h.mu.RUnlock()
	h.metrics.delivered.Add(float64(n))
}
