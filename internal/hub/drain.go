package hub

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// DrainOptions shape how Drain closes clients. Zero values take the defaults.
type DrainOptions struct {
	// ReconnectWindow spreads the reconnect hints: each client is told to wait
	// a uniformly random delay in [0, ReconnectWindow] (default 5s).
	ReconnectWindow time.Duration
	// BatchSize clients are closed together (default 500) ...
	BatchSize int
	// ... and at most BatchInterval apart (default 50ms); less when the
	// deadline of the drain's context leaves less time: the closes are spread
	// over at most half of what is left.
	BatchInterval time.Duration
}

func (o *DrainOptions) setDefaults() {
	if o.ReconnectWindow <= 0 {
		o.ReconnectWindow = 5 * time.Second
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.BatchInterval <= 0 {
		o.BatchInterval = 50 * time.Millisecond
	}
}

// Drain closes every client with 1012 and a reconnect hint, in paced batches,
// and refuses new connections with 1012 from now on. The close handshakes run
// concurrently, each bounded; Drain does not wait for them (WaitEmpty does).
// When ctx ends first, every remaining client is cut at once and Drain returns
// ctx's error.
func (h *Hub) Drain(ctx context.Context, opts DrainOptions) error {
	opts.setDefaults()
	h.mu.Lock()
	h.draining = true
	clients := h.clientsLocked()
	h.mu.Unlock()
	interval := opts.BatchInterval
	if d, ok := ctx.Deadline(); ok && len(clients) > opts.BatchSize {
		batches := (len(clients) + opts.BatchSize - 1) / opts.BatchSize
		interval = min(interval, time.Until(d)/2/time.Duration(batches))
	}
	h.log.Info("closing clients", "clients", len(clients), "reconnect_window", opts.ReconnectWindow.String(),
		"batch", opts.BatchSize, "interval", interval.String())

	for i, c := range clients {
		if ctx.Err() != nil {
			h.cut(clients[i:])
			return ctx.Err()
		}
		c.close(websocket.StatusServiceRestart, reconnectHint(opts.ReconnectWindow))
		if (i+1)%opts.BatchSize == 0 && i+1 < len(clients) && interval > 0 {
			t := time.NewTimer(interval)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
	}
	return nil
}

// Shutdown drains the hub and stops it, in the manner of
// http.Server.Shutdown: new connections are refused with 1012, every client
// is closed with 1012 and a reconnect hint (Drain), Shutdown waits until
// every client has left, then stops the hub, and Run returns. When ctx ends
// first, the clients left are cut, the hub stops all the same, and Shutdown
// returns ctx's error. Shutdown is idempotent: a later call waits for the
// first (or its own ctx) and returns the first's result.
func (h *Hub) Shutdown(ctx context.Context, opts DrainOptions) error {
	h.shutdownOnce.Do(func() {
		err := h.Drain(ctx, opts)
		if err == nil {
			err = h.WaitEmpty(ctx)
		}
		h.stop()
		h.shutdownErr = err
		close(h.shutdownDone)
	})
	select {
	case <-h.shutdownDone:
		return h.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reconnectHint is the close reason of a drain: a jittered delay in JSON.
func reconnectHint(window time.Duration) string {
	return wire.ReconnectHint(time.Duration(rand.Int64N(int64(window) + 1)).Truncate(time.Millisecond))
}

// Cut closes every connection at once, without a close handshake. It is the
// forced end of a drain whose time is up.
func (h *Hub) Cut() {
	h.mu.Lock()
	clients := h.clientsLocked()
	h.mu.Unlock()
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
