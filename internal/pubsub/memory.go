package pubsub

import (
	"context"
	"sync"
)

// Memory is the embedded broker of a single node: there is no other node, so a
// publish is accepted and goes nowhere (the hub delivers to its own members), and
// a subscription is live as soon as it is asked for.
//
// All methods may be called concurrently, before and after Run.
type Memory struct {
	mu     sync.Mutex
	rooms  map[string]struct{}
	closed bool
}

// NewMemory returns a ready in-memory broker.
func NewMemory() *Memory {
	return &Memory{rooms: make(map[string]struct{})}
}

// Publish accepts payload for room.
func (m *Memory) Publish(ctx context.Context, room string, payload []byte) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return ctx.Err()
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

// WaitSubscribed returns at once: an in-memory subscription is live when asked for.
func (m *Memory) WaitSubscribed(ctx context.Context, room string) error { return nil }

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

// Run blocks until ctx is done. The memory broker has nothing to receive.
func (m *Memory) Run(ctx context.Context, _ Sink) error {
	<-ctx.Done()
	return nil
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
