package hub

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// DrainOptions shape how Drain closes clients. Zero values take the defaults.
type DrainOptions struct {
	// ReconnectWindow spreads the reconnect hints: each client is told to wait
	// a uniformly random delay in [0, ReconnectWindow) (default 5s).
	ReconnectWindow time.Duration
	// BatchSize clients are closed together (default 500) ...
	BatchSize int
	// ... and BatchInterval apart (default 50ms).
	BatchInterval time.Duration
}

// Drain closes every client with 1012 and a reconnect hint, in paced batches,
// and refuses new connections with 1012 from now on. The close handshakes run
// concurrently, each bounded; Drain does not wait for them (WaitEmpty does).
// When ctx ends first, every remaining client is cut at once and Drain returns
// ctx's error.
func (h *Hub) Drain(ctx context.Context, opts DrainOptions) error {
	if opts.ReconnectWindow <= 0 {
		opts.ReconnectWindow = 5 * time.Second
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.BatchInterval <= 0 {
		opts.BatchInterval = 50 * time.Millisecond
	}
	h.mu.Lock()
	h.draining = true
	clients := h.clientsLocked()
	h.mu.Unlock()
	h.log.Info("closing clients", "clients", len(clients), "reconnect_window", opts.ReconnectWindow.String())

	for i, c := range clients {
		if ctx.Err() != nil {
			h.cut(clients[i:])
			return ctx.Err()
		}
		c.close(websocket.StatusServiceRestart, reconnectHint(opts.ReconnectWindow))
		if (i+1)%opts.BatchSize == 0 && i+1 < len(clients) {
			t := time.NewTimer(opts.BatchInterval)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
	}
	return nil
}

// reconnectHint is the close reason of a drain: a jittered delay in JSON.
func reconnectHint(window time.Duration) string {
	ms := rand.Int64N(window.Milliseconds() + 1)
	return `{"reconnect_after_ms":` + strconv.FormatInt(ms, 10) + `}`
}

// Cut closes every connection at once, without a close handshake. It is the
// forced end of a drain whose time is up.
func (h *Hub) Cut() {
	h.mu.RLock()
	clients := h.clientsLocked()
	h.mu.RUnlock()
	h.cut(clients)
}

// clientsLocked returns the connected clients; h.mu must be held.
func (h *Hub) clientsLocked() []*Client {
	clients := make([]*Client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	return clients
}

func (h *Hub) cut(clients []*Client) {
	for _, c := range clients {
		c.cut()
	}
}
