package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MemoryConfig holds the in-memory broker's settings.
type MemoryConfig struct {
	// HistorySize is how many messages each room keeps (0: history off).
	HistorySize int
	// HistoryTTL is how long a room's history lives after its last publish
	// (default 5m).
	HistoryTTL time.Duration
	// NodeInfo describes this node, for the cluster view (Nodes and the
	// hub_cluster_nodes metric, registered on Registerer when set).
	NodeInfo   func() NodeInfo
	Registerer prometheus.Registerer
}

// Memory is the embedded broker of a single node: there is no other node, so
// nothing arrives from elsewhere, and a subscription is live as soon as it is
// asked for. With history on it keeps each room's last HistorySize messages
// in a ring, with the same offsets, epochs, expiry and idempotency keys as
// Redis.
//
// All methods may be called concurrently, before and after Run. Publish
// calls done before it returns.
type Memory struct {
	cfg MemoryConfig

	mu     sync.Mutex
	rooms  map[string]struct{} // this node's interest
	hist   map[string]*ring
	closed bool

	pres memPresence
	view *clusterView
}

// ring is one room's history and idempotency keys, guarded by Memory.mu.
type ring struct {
	epoch string
	top   uint64
	// msgs keeps the last HistorySize messages: it grows to that size, then
	// is circular, the oldest at start. Nothing is allocated for a room that
	// is only subscribed to.
	msgs  []kept
	start int
	last  time.Time // last publish (or creation)
	keys  map[string]keyEntry
	order []keyEntry // keys by age, for expiry
}

type kept struct {
	offset uint64
	data   []byte
}

type keyEntry struct {
	key    string
	offset uint64
	at     time.Time
}

// NewMemory returns a ready in-memory broker.
func NewMemory(cfg MemoryConfig) *Memory {
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = 5 * time.Minute
	}
	m := &Memory{cfg: cfg, rooms: make(map[string]struct{}), hist: make(map[string]*ring)}
	m.pres.init()
	// Registering fails only for a second broker on one registry; its view
	// then goes unexported.
	m.view, _ = newClusterView(cfg.NodeInfo, nil)
	if cfg.Registerer != nil {
		cfg.Registerer.Register(m.view)
	}
	m.view.set([]NodeInfo{m.view.info()})
	return m
}

// newEpoch returns a fresh epoch name.
func newEpoch() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ringLocked returns room's history, made (or remade, once expired) when
// create is set; m.mu must be held.
func (m *Memory) ringLocked(room string, create bool) *ring {
	r := m.hist[room]
	if r != nil && time.Since(r.last) > m.cfg.HistoryTTL {
		delete(m.hist, room)
		r = nil
	}
	if r == nil && create {
		r = &ring{epoch: newEpoch(), last: time.Now()}
		m.hist[room] = r
	}
	return r
}

// Publish stores p (with history on) and calls done with its receipt.
func (m *Memory) Publish(p Publication, done func(Receipt, error)) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		done(Receipt{}, unavailable(ErrClosed))
		return
	}
	if m.cfg.HistorySize == 0 && p.IdempotencyKey == "" {
		m.mu.Unlock()
		done(Receipt{}, nil)
		return
	}
	r := m.ringLocked(p.Room, true)
	now := time.Now()
	r.expireKeys(now, m.cfg.HistoryTTL)
	if p.IdempotencyKey != "" {
		if r.keys == nil {
			r.keys = make(map[string]keyEntry)
		}
		if e, ok := r.keys[p.IdempotencyKey]; ok {
			m.mu.Unlock()
			done(m.receipt(r, e.offset, true), nil)
			return
		}
	}
	r.last = now
	var off uint64
	if m.cfg.HistorySize > 0 {
		r.top++
		off = r.top
		e := kept{offset: off, data: p.Data}
		if len(r.msgs) < m.cfg.HistorySize {
			r.msgs = append(r.msgs, e)
		} else {
			r.msgs[r.start] = e
			r.start = (r.start + 1) % len(r.msgs)
		}
	}
	if p.IdempotencyKey != "" {
		e := keyEntry{key: p.IdempotencyKey, offset: off, at: now}
		r.keys[e.key] = e
		r.order = append(r.order, e)
	}
	rc := m.receipt(r, off, false)
	m.mu.Unlock()
	done(rc, nil)
}

func (m *Memory) receipt(r *ring, off uint64, dup bool) Receipt {
	if m.cfg.HistorySize == 0 {
		return Receipt{Duplicate: dup}
	}
	return Receipt{Epoch: r.epoch, Offset: off, Duplicate: dup}
}

func (r *ring) expireKeys(now time.Time, ttl time.Duration) {
	i := 0
	for i < len(r.order) && now.Sub(r.order[i].at) > ttl {
		if r.keys[r.order[i].key].at == r.order[i].at {
			delete(r.keys, r.order[i].key)
		}
		i++
	}
	if i > 0 {
		r.order = append(r.order[:0], r.order[i:]...)
	}
}

// Position returns where room's history stands, making its epoch if it has
// none yet.
func (m *Memory) Position(ctx context.Context, room string) (string, uint64, error) {
	if m.cfg.HistorySize == 0 {
		return "", 0, ErrNoHistory
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return "", 0, unavailable(ErrClosed)
	}
	r := m.ringLocked(room, true)
	return r.epoch, r.top, nil
}

// History returns room's kept messages after offset after, at most limit.
func (m *Memory) History(ctx context.Context, room string, after uint64, limit int) (History, error) {
	if m.cfg.HistorySize == 0 {
		return History{}, ErrNoHistory
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return History{}, unavailable(ErrClosed)
	}
	r := m.ringLocked(room, true)
	h := History{Epoch: r.epoch, Top: r.top}
	for i := 0; i < len(r.msgs) && len(h.Messages) < limit; i++ {
		e := r.msgs[(r.start+i)%len(r.msgs)]
		if e.offset > after {
			h.Messages = append(h.Messages, Message{Room: room, Epoch: r.epoch, Offset: e.offset, Data: e.data})
		}
	}
	return h, nil
}

// Subscribe records this node's interest in room. It never blocks.
func (m *Memory) Subscribe(room string) {
	m.mu.Lock()
	m.rooms[room] = struct{}{}
	m.mu.Unlock()
}

// Unsubscribe drops this node's interest in room. It never blocks.
func (m *Memory) Unsubscribe(room string) {
	m.mu.Lock()
	delete(m.rooms, room)
	m.mu.Unlock()
}

// Subscribed reports whether room is subscribed: as soon as it is asked for.
func (m *Memory) Subscribed(room string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.rooms[room]
	return ok
}

// WaitSubscribed returns at once: an in-memory subscription is live when asked for.
func (m *Memory) WaitSubscribed(ctx context.Context, room string) error {
	if !m.Subscribed(room) {
		return fmt.Errorf("pubsub: %q: not subscribed", room)
	}
	return nil
}

// Subscriptions returns how many rooms this node is subscribed to.
func (m *Memory) Subscriptions() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.rooms)
}

// Ready reports whether the broker can carry messages: always, until closed.
func (m *Memory) Ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Run drops expired histories, keeps the cluster view (this node) up to
// date, and hands presence events and commands to sink when it is a
// PresenceSink, until ctx is done.
func (m *Memory) Run(ctx context.Context, sink Sink) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.runPresence(ctx, sink) })
	t := time.NewTicker(time.Second)
	defer t.Stop()
	expire := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.view.set([]NodeInfo{m.view.info()})
			if time.Since(expire) < max(m.cfg.HistoryTTL/2, time.Second) {
				continue
			}
			expire = time.Now()
			m.mu.Lock()
			for room := range m.hist {
				m.ringLocked(room, false)
			}
			m.mu.Unlock()
		}
	}
}

// StopSubscriptions drops this node's interest in every room.
func (m *Memory) StopSubscriptions(context.Context) error {
	m.mu.Lock()
	clear(m.rooms)
	m.mu.Unlock()
	return nil
}

// Close stops the broker; later publishes fail with ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
