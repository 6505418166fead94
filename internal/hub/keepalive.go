package hub

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/hubcluster/hubcluster/internal/wire"
)

// startKeepalive arms the client's ping timer, when keepalive is on.
func (c *Client) startKeepalive() {
	if c.hub.cfg.PingInterval <= 0 {
		return
	}
	c.w.mu.Lock()
	if c.w.state != wClosed {
		c.w.pinger = time.AfterFunc(c.hub.cfg.PingInterval, c.keepalive)
	}
	c.w.mu.Unlock()
}

// keepalive pings the peer; an unanswered ping cuts the connection. It runs
// from the client's timer and re-arms it.
func (c *Client) keepalive() {
	w := &c.w
	w.mu.Lock()
	if w.state == wClosed {
		w.mu.Unlock()
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	defer w.wg.Done()

	h := c.hub
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.WriteTimeout)
	err := c.conn.Ping(ctx)
	cancel()
	if err != nil {
		h.log.Debug("ping not answered", "err", err)
		c.cut()
		return
	}
	w.mu.Lock()
	if w.state != wClosed {
		w.pinger.Reset(h.cfg.PingInterval)
	}
	w.mu.Unlock()
}

// allowPing is asked for every ping the client sends: pings count against
// the same rate limit as requests. Over it the ping is not answered, and a
// client that persists is closed with 4001.
func (c *Client) allowPing() bool {
	h := c.hub
	switch c.guard.allow(h.cfg.ClientRate, h.cfg.ClientBurst) {
	case allowed:
		return true
	case limitedClose:
		h.metrics.rateLimited.Inc()
		h.log.Info("connection closed: persistently over the rate limit with pings", "ip", c.ip)
		c.close(wire.StatusRateLimited, "rate limited")
		return false
	}
	h.metrics.rateLimited.Inc()
	return false
}

// pingGate decides whether a ping from the peer is answered. Accept makes
// it before the Client exists; Serve points it at the client.
type pingGate struct {
	allow atomic.Pointer[func() bool]
}

func (g *pingGate) set(f func() bool) { g.allow.Store(&f) }

func (g *pingGate) onPing(context.Context, []byte) bool {
	if f := g.allow.Load(); f != nil {
		return (*f)()
	}
	return true
}
