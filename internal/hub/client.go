package hub

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// Client is one WebSocket connection served by the hub.
//
// An idle client owns no goroutine but the one running Serve (its read loop):
// a writer goroutine exists only while messages are queued, and keepalive is a
// timer that starts a short-lived goroutine to ping.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	raw  net.Conn // under conn, when known: closing it cuts even a pending close
	ip   string

	rooms []*room // guarded by hub.mu

	guard guard // the read loop's own: authentication and rate limit

	mu      sync.Mutex // guards the fields below
	queue   [][]byte   // frames waiting to be written
	spare   [][]byte   // the writer's last batch, kept for reuse
	writing bool       // a writer goroutine is running
	closing bool       // no more frames are queued
	broken  bool       // the writer stopped: the connection failed or is cut
	code    websocket.StatusCode
	pinger  *time.Timer
	wg      sync.WaitGroup // writer, pinger and closer goroutines
}

// idleQueueCap is the largest queue capacity an idle client keeps.
const idleQueueCap = 8

// maxBatchBytes bounds one batched frame; a larger batch is written as several.
const maxBatchBytes = 64 << 10

// ConnInfo is what the HTTP layer knows of a connection.
type ConnInfo struct {
	// IP is the client's address, for logs and limits.
	IP string
	// Token is a token sent with the upgrade (?token=), or empty.
	Token string
}

// Serve serves conn until it closes, then unregisters it. raw is the network
// connection under conn (see Accept); it may be nil. A connection that
// arrives while the hub drains is closed with 1012 and a reconnect hint; one
// that arrives after the hub stopped, with 1013. conn must come from
// Accept; Serve owns it from here on.
func (h *Hub) Serve(conn *websocket.Conn, raw net.Conn, info ConnInfo) {
	conn.SetReadLimit(h.cfg.MaxMessageBytes)
	c := &Client{hub: h, conn: conn, raw: raw, ip: info.IP}
	if code := h.register(c); code != 0 {
		h.metrics.closes.WithLabelValues(codeLabel(code)).Inc()
		reason := "node stopped"
		if code == websocket.StatusServiceRestart {
			reason = reconnectHint(time.Second)
		}
		conn.Close(code, reason)
		return
	}
	defer h.unregister(c)

	if h.cfg.PingInterval > 0 {
		c.mu.Lock()
		c.pinger = time.AfterFunc(h.cfg.PingInterval, c.keepalive)
		c.mu.Unlock()
	}
	err := c.start(info.Token)
	if err == nil {
		err = c.readLoop()
	}
	c.guard.stop()

	c.mu.Lock()
	c.closing = true
	if c.pinger != nil {
		c.pinger.Stop()
	}
	code := c.code
	c.mu.Unlock()
	if code == 0 {
		code = closeCodeOf(err)
	} else {
		c.wg.Wait() // let the hub's own close handshake finish before cutting
	}
	h.metrics.closes.WithLabelValues(codeLabel(code)).Inc()
	if code == websocket.StatusAbnormalClosure || code == websocket.StatusInternalError {
		h.log.Debug("connection lost", "err", err)
	}
	c.cut()
	c.wg.Wait()
}

// closeCodeOf names how a read loop ended: the peer's close code, 1009 for a
// frame over the limit, 1006 for a connection that just went away.
func closeCodeOf(err error) websocket.StatusCode {
	if code := websocket.CloseStatus(err); code != -1 {
		return code
	}
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return websocket.StatusMessageTooBig
	}
	return websocket.StatusAbnormalClosure
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads frames until the connection ends, and handles each object.
func (c *Client) readLoop() error {
	h := c.hub
	for {
		typ, r, err := c.conn.Reader(h.ctx)
		if err != nil {
			return err
		}
		buf := readBufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err = buf.ReadFrom(r)
		if err != nil {
			readBufs.Put(buf)
			return err
		}
		err = c.handleFrame(typ, buf.Bytes())
		if buf.Cap() <= 64<<10 {
			readBufs.Put(buf)
		}
		if err != nil {
			return err
		}
	}
}

// errClosed ends a read loop after the hub closed the connection itself.
var errClosed = errors.New("hub: connection closed by the hub")

func (c *Client) handleFrame(typ websocket.MessageType, frame []byte) error {
	if typ != websocket.MessageText {
		c.replyError(wire.ErrorFor(nil, wire.CodeBadRequest, "binary frames are not accepted; send text"))
		return nil
	}
	if !utf8.Valid(frame) {
		c.close(websocket.StatusInvalidFramePayloadData, "frame is not valid UTF-8")
		return errClosed
	}
	return wire.Split(frame, func(line []byte) error {
		c.hub.metrics.received.Inc()
		return c.handle(line)
	})
}

// handle carries out one client request and replies to it. An error ends the
// connection (the hub has closed it).
func (c *Client) handle(line []byte) error {
	h := c.hub
	req, err := wire.Decode(line)
	if err != nil {
		c.replyError(err.(*wire.Error))
		return nil
	}
	if !c.guard.allow(h.cfg.ClientRate, h.cfg.ClientBurst) {
		h.metrics.rateLimited.Inc()
		if c.guard.strike(h.cfg.ClientBurst) {
			h.log.Info("connection closed: persistently over the rate limit", "ip", c.ip)
			c.close(StatusRateLimited, "rate limited")
			return errClosed
		}
		c.replyError(wire.ErrorFor(req.ID, wire.CodeRateLimited, "too many requests; slow down"))
		return nil
	}
	if req.Type == wire.TypeAuth {
		return c.authenticate(req)
	}
	if h.cfg.Authenticator != nil && c.guard.grant == nil {
		c.reject("authenticate first")
		return errClosed
	}
	switch req.Type {
	case wire.TypeSubscribe:
		if g := c.guard.grant; g != nil && !g.CanSubscribe(req.Room) {
			h.metrics.forbidden.Inc()
			c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, "the token does not grant subscribing to this room"))
			return nil
		}
		if c.roomCount() >= h.cfg.MaxRoomsPerClient {
			c.replyError(wire.ErrorFor(req.ID, wire.CodeTooLarge, "this connection is in the most rooms allowed"))
			return nil
		}
		if h.join(c, req.Room) {
			ctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
			err := h.broker.WaitSubscribed(ctx, req.Room)
			cancel()
			if err != nil {
				h.leave(c, req.Room)
				h.log.Warn("subscription not confirmed", "room", req.Room, "err", err)
				c.replyError(wire.ErrorFor(req.ID, wire.CodeUnavailable, "the room's subscription could not be made; retry"))
				return nil
			}
		}
	case wire.TypeUnsubscribe:
		if !h.leave(c, req.Room) {
			c.replyError(wire.ErrorFor(req.ID, wire.CodeNotSubscribed, "not subscribed to this room"))
			return nil
		}
	case wire.TypePublish:
		if g := c.guard.grant; g != nil && !g.CanPublish(req.Room) {
			h.metrics.forbidden.Inc()
			c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, "the token does not grant publishing to this room"))
			return nil
		}
		if err := h.Publish(h.ctx, req.Room, req.Data); err != nil {
			h.log.Warn("publish failed", "room", req.Room, "err", err)
			c.replyError(wire.ErrorFor(req.ID, wire.CodeUnavailable, "the message could not be handed to the broker; retry"))
			return nil
		}
	}
	c.ack(req.ID)
	return nil
}

func (c *Client) ack(id []byte) {
	if len(id) > 0 {
		c.send(wire.AppendAck(nil, id))
	}
}

func (c *Client) roomCount() int {
	c.hub.mu.RLock()
	defer c.hub.mu.RUnlock()
	return len(c.rooms)
}

func (c *Client) replyError(e *wire.Error) {
	c.send(wire.AppendError(nil, e))
}

// send queues frame for this client and reports whether it was queued. It never
// blocks: a full queue cuts the client off with 4000.
func (c *Client) send(frame []byte) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= c.hub.cfg.SendQueue {
		c.mu.Unlock()
		c.hub.metrics.overflows.Inc()
		c.close(StatusSlowConsumer, "slow consumer: send queue overflowed")
		return false
	}
	c.queue = append(c.queue, frame)
	if !c.writing {
		c.writing = true
		c.wg.Add(1)
		go c.writeLoop()
	}
	c.mu.Unlock()
	return true
}

// close closes the connection with code and reason, once, without blocking the
// caller: the close handshake runs in a goroutine of the client's own, and the
// frames still queued are dropped.
func (c *Client) close(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return // already closing, or torn down
	}
	c.code = code
	c.closing = true
	c.broken = true
	c.queue = nil
	c.wg.Go(func() { c.conn.Close(code, reason) })
}

// writeLoop writes what is queued, batching every frame waiting into one
// newline-separated WebSocket frame, until the queue is empty.
func (c *Client) writeLoop() {
	defer c.wg.Done()
	if d := c.hub.cfg.WriteCoalesce; d > 0 {
		// Let more messages join this one: one frame, one syscall for all.
		time.Sleep(d)
	}
	var batch [][]byte
	for {
		c.mu.Lock()
		if batch != nil {
			clear(batch)
			c.spare = batch[:0]
		}
		if len(c.queue) == 0 || c.broken {
			c.writing = false
			if cap(c.queue) > idleQueueCap {
				c.queue = nil
			}
			if cap(c.spare) > idleQueueCap {
				c.spare = nil
			}
			c.mu.Unlock()
			return
		}
		batch, c.queue, c.spare = c.queue, c.spare, nil
		c.mu.Unlock()

		if err := c.writeBatch(batch); err != nil {
			c.mu.Lock()
			c.broken = true
			c.mu.Unlock()
			c.cut()
		}
	}
}

var writeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeBatch writes frames as few WebSocket frames as maxBatchBytes allows,
// each write bounded by WriteTimeout.
func (c *Client) writeBatch(frames [][]byte) error {
	if len(frames) == 1 {
		return c.write(frames[0])
	}
	buf := writeBufs.Get().(*bytes.Buffer)
	defer writeBufs.Put(buf)
	buf.Reset()
	for _, f := range frames {
		if buf.Len() > 0 && buf.Len()+1+len(f) > maxBatchBytes {
			if err := c.write(buf.Bytes()); err != nil {
				return err
			}
			buf.Reset()
		}
		if buf.Len() > 0 {
			buf.WriteByte('\n')
		}
		buf.Write(f)
	}
	return c.write(buf.Bytes())
}

// write writes one frame within WriteTimeout. With the raw connection at hand
// the deadline is the socket's own: no context, timer or goroutine per write,
// and no lock shared with other clients (the hub's context). A stopped hub
// cuts the socket, which ends a write in progress.
func (c *Client) write(p []byte) error {
	if c.raw != nil {
		if err := c.raw.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteTimeout)); err != nil {
			return err
		}
		// Clear it after: a stale deadline would fail the next control frame
		// (a ping, the close of a drain) that coder/websocket writes itself.
		defer c.raw.SetWriteDeadline(time.Time{})
		return c.conn.Write(context.Background(), websocket.MessageText, p)
	}
	ctx, cancel := context.WithTimeout(c.hub.ctx, c.hub.cfg.WriteTimeout)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageText, p)
}

// keepalive pings the peer; an unanswered ping cuts the connection. It runs
// from the client's timer and re-arms it.
func (c *Client) keepalive() {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()

	h := c.hub
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.WriteTimeout)
	err := c.conn.Ping(ctx)
	cancel()
	if err != nil {
		h.log.Debug("ping not answered", "err", err)
		c.cut()
		return
	}
	c.mu.Lock()
	if !c.closing {
		c.pinger.Reset(h.cfg.PingInterval)
	}
	c.mu.Unlock()
}

// cut closes the connection at once, without a handshake, even while a close
// handshake is waiting on the peer.
func (c *Client) cut() {
	if c.raw != nil {
		c.raw.Close()
	}
	c.conn.CloseNow()
}
