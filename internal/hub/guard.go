package hub

import (
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// guard is a client's authentication and rate-limit state. Its mutex makes
// it safe from the read loop, the dispatch goroutine and the ping callback;
// its timers only close the connection.
type guard struct {
	mu       sync.Mutex
	grant    *auth.Grant
	deadline *time.Timer // closes the connection: authentication timeout, then token expiry

	tokens  float64 // token bucket
	last    time.Time
	strikes int // requests rejected in the current window
	window  time.Time
}

// strikeWindow is how long rejections add up before the count starts over.
const strikeWindow = 10 * time.Second

type verdict int

const (
	allowed verdict = iota
	limited
	limitedClose // limited, and more than burst rejections within strikeWindow
)

// allow takes one token from the bucket, refilled at rate per second up to
// burst, for something the client sent just now; rate 0 allows everything.
func (g *guard) allow(rate float64, burst int) verdict {
	if rate <= 0 {
		return allowed
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if g.last.IsZero() {
		g.tokens = float64(burst)
	} else {
		g.tokens = min(float64(burst), g.tokens+now.Sub(g.last).Seconds()*rate)
	}
	g.last = now
	if g.tokens >= 1 {
		g.tokens--
		return allowed
	}
	if now.Sub(g.window) > strikeWindow {
		g.window, g.strikes = now, 0
	}
	g.strikes++
	if g.strikes > burst {
		return limitedClose
	}
	return limited
}

func (g *guard) currentGrant() *auth.Grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grant
}

func (g *guard) authenticated() bool { return g.currentGrant() != nil }

func (g *guard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.deadline != nil {
		g.deadline.Stop()
	}
}

// start sets up authentication for a new connection: with a token from the
// upgrade it is checked now; without one the client has AuthTimeout to send
// an auth request. An error means the connection was refused and closed.
func (c *Client) start(token string) error {
	h := c.hub
	if h.cfg.Authenticator == nil {
		return nil
	}
	if token != "" {
		g, err := h.cfg.Authenticator.Verify(token)
		if err != nil {
			c.reject(err.Error())
			return errClosed
		}
		c.setGrant(g)
		return nil
	}
	c.guard.mu.Lock()
	c.guard.deadline = time.AfterFunc(h.cfg.AuthTimeout, func() { c.reject("authentication timeout") })
	c.guard.mu.Unlock()
	return nil
}

// authenticate handles an auth request: the first one authenticates the
// connection (a bad token closes it with 1008); a later one refreshes the
// token (a bad token gets an error, and the current token stays). A refreshed
// token that no longer grants a room the client is in takes it out of that
// room, with an unsubscribed message naming it.
func (c *Client) authenticate(req wire.Request) error {
	h := c.hub
	if h.cfg.Authenticator == nil {
		c.ackSimple(req.ID) // an open node takes any client
		return nil
	}
	g, err := h.cfg.Authenticator.Verify(req.Token)
	if err != nil {
		if !c.guard.authenticated() {
			c.reject(err.Error())
			return errClosed
		}
		h.metrics.authFailures.Inc()
		h.log.Info("token refresh refused", "ip", c.ip, "reason", err.Error())
		c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, err.Error()))
		return nil
	}
	c.setGrant(g)
	for _, room := range c.roomNames() {
		if !g.CanSubscribe(room) && h.leave(c, room) {
			h.metrics.forbidden.Inc()
			c.send(wire.AppendUnsubscribed(nil, room, wire.CodeForbidden, "the new token does not grant this room"))
		}
	}
	c.ackSimple(req.ID)
	return nil
}

// setGrant makes g the connection's grant and closes the connection when it
// expires.
func (c *Client) setGrant(g *auth.Grant) {
	c.guard.mu.Lock()
	defer c.guard.mu.Unlock()
	if c.guard.deadline != nil {
		c.guard.deadline.Stop()
	}
	c.guard.grant = g
	c.guard.deadline = time.AfterFunc(time.Until(g.Expires), func() { c.reject("token expired") })
}

// reject closes the connection with 1008 and logs why, with the client's IP
// and never the token.
func (c *Client) reject(why string) {
	c.hub.metrics.authFailures.Inc()
	c.hub.log.Info("connection refused", "ip", c.ip, "reason", why)
	if len(why) > 100 {
		why = why[:100]
	}
	c.close(websocket.StatusPolicyViolation, why)
}
