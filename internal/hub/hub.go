// Package hub is a node's local hub: WebSocket clients, the rooms they joined,
// a bounded send queue per client, and, with history on, where the node
// stands in each room's offsets.
//
// The hub is usable as soon as New returns: its lifetime context, tables and
// metrics are made there, so a connection served before Run works like any
// other. Run marks the hub running and, when its context ends, stops it: every
// connection still open is cut, and Run waits for every Serve to return.
// Shutdown drains it instead. Serve calls made after the hub stopped are
// refused with close code 1013.
//
// Nothing in the hub waits on a goroutine that may be gone: registering and
// unregistering a client take mutexes, never a channel send, so a client's
// teardown cannot block whether or not Run is still running. Delivering never
// blocks on a client: a client that falls behind its messages is cut off with
// 4000.
//
// Order: with history on, every message of a room reaches the room's local
// members in offset order, exactly once; a hole the node cannot fill from the
// history is told to them with a gap. With history off, each publisher's
// messages keep their order.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/logthrottle"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Broker carries messages to the other nodes and keeps the rooms' history.
// pubsub.Memory and pubsub.Redis implement it.
type Broker interface {
	// Publish hands p to the cluster and calls done once, from any
	// goroutine, with the receipt or an error wrapping pubsub.ErrUnavailable
	// (certainly not handed on) or pubsub.ErrUncertain. It never blocks, and
	// one caller's publications keep their order.
	Publish(p pubsub.Publication, done func(pubsub.Receipt, error))
	// Subscribe and Unsubscribe record this node's interest in a room. They
	// never block; the broker makes the subscription in the background.
	Subscribe(room string)
	Unsubscribe(room string)
	// Subscribed reports whether room's subscription is live now;
	// WaitSubscribed blocks until it is, or ctx ends.
	Subscribed(room string) bool
	WaitSubscribed(ctx context.Context, room string) error
	// Position and History read a room's history (history on only).
	Position(ctx context.Context, room string) (epoch string, top uint64, err error)
	History(ctx context.Context, room string, after uint64, limit int) (pubsub.History, error)
}

// Authenticator verifies a connection's token. auth.Verifier implements it.
type Authenticator interface {
	Verify(token string) (*auth.Grant, error)
}

// Config holds the hub's settings. Zero values take the defaults noted.
type Config struct {
	// NodeID names this node in logs.
	NodeID string
	// Origin tells this node's publications apart from every other
	// process's, with history off (default: NodeID). It must be unique in
	// the cluster and must not contain '\n'.
	Origin string
	// SendQueue is how many messages may wait for a client before it counts
	// as behind (default 256). A client that stays behind for longer than
	// SlowTimeout (default 5s), or whose queue holds more than
	// SendQueueBytes (default 1 MiB), is cut off with 4000: a burst the node
	// hands a healthy reader all at once is not slowness.
	SendQueue      int
	SlowTimeout    time.Duration
	SendQueueBytes int
	// MaxMessageBytes is the largest frame a client may send (default 65536).
	MaxMessageBytes int64
	// WriteTimeout bounds every write to a socket (default 10s).
	WriteTimeout time.Duration
	// WriteCoalesce chooses how a client's messages are batched into
	// frames. 0 (the default) is adaptive: a client idle for a moment is
	// written to at once; a busy one (written to within the last 2ms) waits
	// for the next tick of a flusher (0.5 to 5ms, longer the busier the
	// node), so what arrives meanwhile goes out in the same frame and
	// syscall. Positive: hold every client's first queued message that long
	// (a fixed delay, as before). Negative: never wait; batch only what
	// queued up during the previous write.
	WriteCoalesce time.Duration
	// PingInterval is how often an idle connection is pinged; a ping not
	// answered within WriteTimeout cuts the connection (default 25s; negative
	// turns keepalive off).
	PingInterval time.Duration
	// BrokerTimeout bounds how long a publish, a subscribe or a history read
	// waits for the broker (default 5s).
	BrokerTimeout time.Duration
	// HistorySize is how many messages the broker keeps per room (0: history
	// off). It bounds every history read the hub makes.
	HistorySize int
	// Authenticator verifies connection tokens; nil runs the hub open: every
	// client may subscribe and publish to every room.
	Authenticator Authenticator
	// AuthTimeout is how long a connection may stay unauthenticated before it
	// is closed with 1008 (default 10s).
	AuthTimeout time.Duration
	// ClientRate is how many requests (and pings) per second a client may
	// send, with bursts of ClientBurst; 0 turns the limit off. Every object
	// counts when it arrives, valid or not. Over it a request gets
	// rate_limited; more than ClientBurst rejections within 10s closes the
	// connection with 4001.
	ClientRate  float64
	ClientBurst int
	// MaxRoomsPerClient bounds the rooms one connection is in (default 128).
	MaxRoomsPerClient int
	// Presence is where the hub writes its members' presence entries and
	// reads rooms' members; nil serves no presence (a presence request gets
	// bad_request).
	Presence Presence
	// PresenceLimit is the most members one presence answer lists (default
	// 1000); the count is always the total.
	PresenceLimit int
	// Logger receives the hub's logs (default: discarded).
	Logger *slog.Logger
	// Registerer receives the hub's metrics (default: not registered).
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Origin == "" {
		c.Origin = c.NodeID
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 256
	}
	if c.SlowTimeout <= 0 {
		c.SlowTimeout = 5 * time.Second
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 1 << 20
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
	if c.PresenceLimit <= 0 {
		c.PresenceLimit = 1000
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
	rooms   roomTable

	// ctx is the hub's lifetime: made in New, canceled when the hub stops.
	// Every read and write of every client runs under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex // guards the fields below
	state    state
	draining bool // Drain began: new connections are closed with 1012
	clients  map[*Client]struct{}
	serving  sync.WaitGroup // one per registered client; stop waits on it
	empty    chan struct{}  // closed and replaced when the last client leaves
	stopped  chan struct{}  // closed once the hub has stopped

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error

	work sync.WaitGroup // the hub's own goroutines: history fills and fetches

	flushers []*flusher    // adaptive write batching, one per CPU
	nextFl   atomic.Uint32 // spreads clients over the flushers

	// seq numbers the clients, for their ids in the cluster.
	seq atomic.Uint64

	presMu    sync.Mutex
	presReads map[string]*presenceRead // shared presence reads, by room

	// behind counts the clients with more than SendQueue messages waiting.
	behind atomic.Int64

	// Failures a flood of which must not flood the log.
	publishFailedLog, subscribeFailedLog *logthrottle.Throttle
}

// overloaded reports whether the node is behind its own work: more than a
// tenth of its clients (and at least 8) have more than SendQueue messages
// waiting. Then the node refuses publishes (unavailable: retry later) instead
// of queueing more, and does not cut members that fall behind with it.
func (h *Hub) overloaded() bool {
	n := h.behind.Load()
	if n < 8 {
		return false
	}
	h.mu.Lock()
	clients := len(h.clients)
	h.mu.Unlock()
	return n*10 > int64(clients)
}

// overloadedBroker is what a broker that can tell its own backlog offers.
type overloadedBroker interface {
	// Backlog is how long publications have lately waited in the broker's
	// queue before they were sent.
	Backlog() time.Duration
}

// maxBrokerBacklog is how long publications may wait in the broker's queue
// before the node refuses new ones.
const maxBrokerBacklog = time.Second

// New returns a hub that is ready to serve connections.
func New(cfg Config, broker Broker) (*Hub, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("hub: empty node id")
	}
	for i := 0; i < len(cfg.Origin); i++ {
		if cfg.Origin[i] == '\n' {
			return nil, errors.New("hub: origin contains a newline")
		}
	}
	if cfg.HistorySize < 0 {
		return nil, errors.New("hub: negative history size")
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		cfg:          cfg,
		log:          cfg.Logger.With("component", "hub"),
		broker:       broker,
		ctx:          ctx,
		cancel:       cancel,
		clients:      make(map[*Client]struct{}),
		empty:        make(chan struct{}),
		stopped:      make(chan struct{}),
		shutdownDone: make(chan struct{}),
		presReads:    make(map[string]*presenceRead),
	}
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(h.behind.Load()) })
	if err != nil {
		cancel()
		return nil, err
	}
	h.metrics = m
	h.publishFailedLog = logthrottle.New(h.log, slog.LevelWarn, "publish failed", 10*time.Second)
	h.subscribeFailedLog = logthrottle.New(h.log, slog.LevelWarn, "subscription not confirmed", 10*time.Second)
	h.rooms.init()
	for range runtime.GOMAXPROCS(0) {
		h.flushers = append(h.flushers, newFlusher())
	}
	return h, nil
}

func (h *Hub) history() bool { return h.cfg.HistorySize > 0 }

// Run marks the hub running and blocks until ctx ends or Shutdown has
// stopped the hub. When ctx ends first it stops the hub: later Serve calls
// are refused, every open connection is cut, and Run returns once every Serve
// has returned. Connections served before Run are kept. Run may be called once.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.state != stateNew {
		h.mu.Unlock()
		return errors.New("hub: Run called twice")
	}
	h.state = stateRunning
	h.mu.Unlock()

	select {
	case <-ctx.Done():
		h.stop()
	case <-h.stopped:
	}
	h.serving.Wait()
	h.work.Wait()
	return nil
}

// stop stops the hub: later Serve calls are refused, and every connection
// still open is cut. It returns at once; the Serve calls end shortly after.
func (h *Hub) stop() {
	h.mu.Lock()
	if h.state == stateStopped {
		h.mu.Unlock()
		return
	}
	h.state = stateStopped
	close(h.stopped)
	h.mu.Unlock()
	h.cancel()
	h.Cut() // close handshakes still waiting on peers end now
}

// Running reports whether Run is running and the hub has not stopped.
func (h *Hub) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state == stateRunning
}

// Clients returns how many clients are connected.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// Rooms returns how many rooms have at least one local member.
func (h *Hub) Rooms() int { return h.rooms.len() }

// WaitEmpty blocks until the hub has no client and no room, or ctx ends.
func (h *Hub) WaitEmpty(ctx context.Context) error {
	for {
		h.mu.Lock()
		n, empty := len(h.clients), h.empty
		h.mu.Unlock()
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
	switch {
	case h.state == stateStopped:
		return websocket.StatusTryAgainLater
	case h.draining:
		return websocket.StatusServiceRestart
	}
	h.clients[c] = struct{}{}
	h.serving.Add(1)
	h.metrics.connections.Inc()
	return 0
}

// unregister removes c from the hub and from every room it joined. It takes
// mutexes and nothing else, so it returns at once, before and after Run.
// Unregistering a client twice, or one never registered, does nothing.
func (h *Hub) unregister(c *Client) {
	for _, m := range c.leaveAll() {
		h.removeMember(m)
	}
	h.mu.Lock()
	if _, ok := h.clients[c]; !ok {
		h.mu.Unlock()
		return
	}
	delete(h.clients, c)
	if len(h.clients) == 0 {
		close(h.empty)
		h.empty = make(chan struct{})
	}
	h.mu.Unlock()
	h.metrics.connections.Dec()
	h.serving.Done()
}

// Publish sends data, JSON without a newline, to every member of room on
// every node, and returns once the broker has taken it; members on this node
// have it queued by then when history is off. key, when not empty, is the
// publication's idempotency key. The error wraps pubsub.ErrUnavailable (not
// handed on: retry) or pubsub.ErrUncertain (it may be delivered: retry with
// the same key). room must be a valid room name.
func (h *Hub) Publish(ctx context.Context, room string, data []byte, key string) (pubsub.Receipt, error) {
	type outcome struct {
		rc  pubsub.Receipt
		err error
	}
	done := make(chan outcome, 1)
	h.publish(pubsub.Publication{Room: room, Data: data, IdempotencyKey: key}, func(rc pubsub.Receipt, err error) {
		done <- outcome{rc, err}
	})
	select {
	case o := <-done:
		return o.rc, o.err
	case <-ctx.Done():
		return pubsub.Receipt{}, fmt.Errorf("hub: publish to %q: %w: %w", room, pubsub.ErrUncertain, ctx.Err())
	}
}

// ErrNoHistory: the node keeps no history (HUB_HISTORY_SIZE=0).
var ErrNoHistory = pubsub.ErrNoHistory

// History returns room's stored messages after offset after, oldest first,
// at most limit (and at most the history size), with where the room's
// history stands. With history off it returns ErrNoHistory.
func (h *Hub) History(ctx context.Context, room string, after uint64, limit int) (pubsub.History, error) {
	if !h.history() {
		return pubsub.History{}, ErrNoHistory
	}
	if limit <= 0 || limit > h.cfg.HistorySize {
		limit = h.cfg.HistorySize
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.BrokerTimeout)
	defer cancel()
	return h.broker.History(ctx, room, after, limit)
}

// publish hands p to the broker and calls done with the outcome. The local
// members get the message as soon as the broker took it. p.Data must not
// change afterwards. It never blocks.
func (h *Hub) publish(p pubsub.Publication, done func(pubsub.Receipt, error)) {
	if reason := h.overload(); reason != "" {
		h.metrics.overloadRefusals.WithLabelValues(reason).Inc()
		h.metrics.publishFailures.WithLabelValues("unavailable").Inc()
		done(pubsub.Receipt{}, fmt.Errorf("hub: publish to %q: %w: the node is overloaded (%s); retry later", p.Room, pubsub.ErrUnavailable, reason))
		return
	}
	h.broker.Publish(p, func(rc pubsub.Receipt, err error) {
		if err != nil {
			reason := "unavailable"
			if errors.Is(err, pubsub.ErrUncertain) {
				reason = "timeout"
			}
			h.metrics.publishFailures.WithLabelValues(reason).Inc()
			done(rc, fmt.Errorf("hub: publish to %q: %w", p.Room, err))
			return
		}
		h.metrics.published.Inc()
		if !rc.Duplicate {
			h.deliverOwn(p, rc)
		}
		done(rc, nil)
	})
}

// overload says why the node refuses publishes now, or "".
func (h *Hub) overload() string {
	if h.overloaded() {
		return "clients_behind"
	}
	if b, ok := h.broker.(overloadedBroker); ok && b.Backlog() > maxBrokerBacklog {
		return "broker_backlog"
	}
	return ""
}

// Deliver takes a message the broker brought in, and queues it for every
// local member of its room. With history off it drops this node's own
// messages, which its members already have. It never blocks.
func (h *Hub) Deliver(m pubsub.Message) {
	if !h.history() || m.Offset == 0 {
		if m.Origin == h.cfg.Origin {
			return
		}
		if r := h.rooms.get(m.Room); r != nil {
			r.mu.Lock()
			r.emitLocked(0, wire.AppendMessage(nil, m.Room, 0, m.Data))
			r.mu.Unlock()
		}
		return
	}
	if r := h.rooms.get(m.Room); r != nil {
		r.mu.Lock()
		r.acceptLocked(m, true)
		r.mu.Unlock()
	}
}

// deliverOwn gives the local members a message this node published.
func (h *Hub) deliverOwn(p pubsub.Publication, rc pubsub.Receipt) {
	r := h.rooms.get(p.Room)
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !h.history() || rc.Offset == 0 {
		r.emitLocked(0, wire.AppendMessage(nil, p.Room, 0, p.Data))
		return
	}
	r.acceptLocked(pubsub.Message{Room: p.Room, Epoch: rc.Epoch, Offset: rc.Offset, Data: p.Data}, false)
}

// Resync takes rooms whose subscription was lost and is back: with history
// on the node reads what it missed back from the history and delivers it in
// order, telling its members gap only for what the history lost; with
// history off it tells them gap. Members that watch the room's presence get
// a snapshot of it, since joins and leaves may have been missed.
func (h *Hub) Resync(rooms []string) {
	for _, name := range rooms {
		r := h.rooms.get(name)
		if r == nil {
			continue
		}
		r.mu.Lock()
		if h.history() {
			r.suspect = true
			if r.synced {
				r.startFillLocked()
			}
		} else {
			r.gapLocked()
		}
		r.resyncPresenceLocked()
		r.mu.Unlock()
	}
}

// Gap tells the members of rooms that messages may have been lost.
func (h *Hub) Gap(rooms []string) {
	for _, name := range rooms {
		if r := h.rooms.get(name); r != nil {
			r.mu.Lock()
			r.gapLocked()
			r.mu.Unlock()
		}
	}
}
