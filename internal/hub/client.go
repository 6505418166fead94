package hub

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// Client is one WebSocket connection served by the hub.
//
// Its jobs are split by owner: the read loop (Serve's goroutine) reads
// frames, charges the rate limit as objects arrive and carries out requests
// in order (this file); a request that must wait for the broker (a subscribe
// whose room is not live yet, a recovery) moves the requests behind it to a
// short-lived dispatch goroutine, so the read loop keeps reading and nothing
// is charged late; the writer (writer.go) owns the send queue and the
// goroutine that writes it; keepalive (keepalive.go) pings.
//
// An idle client owns one goroutine, its read loop.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	raw  net.Conn // under conn, when known: closing it cuts even a pending close
	ip   string
	seq  uint64 // the client's number on this node: its id is origin.seq

	// ctx ends when the read loop does: a dispatch goroutine, or a request
	// waiting for room, stops waiting. Made on first use (lifetime), guarded
	// by dmu: an idle client has none.
	ctx    context.Context
	cancel context.CancelFunc
	ended  bool

	roomsMu sync.Mutex // guards rooms and gone
	rooms   []*member
	gone    bool // unregistered: joins fail

	guard guard // authentication and rate limit

	// dispatch: requests waiting behind one that waits for the broker.
	dmu          sync.Mutex
	busy         bool // a dispatch goroutine runs: new requests queue behind it
	backlog      [][]byte
	backlogBytes int
	roomFor      chan struct{} // closed when the backlog has room again; nil unless the read loop waits
	dispatch     sync.WaitGroup
	inflight     atomic.Int32 // publishes the broker has not answered yet
	// pubWait is closed when inflight drops under maxInflight, for a
	// publish that waits for room; guarded by dmu. pubWaiting says one
	// waits, so a broker callback need not take dmu otherwise.
	pubWait    chan struct{}
	pubWaiting atomic.Bool

	w writer
}

// maxBacklog and maxBacklogBytes bound the requests queued behind one that
// waits for the broker. Past them the read loop waits (TCP backpressure) for
// the dispatch goroutine: only a client sending far over any rate limit gets
// there, and none of its requests is refused for the node's backlog.
const (
	maxBacklog      = 4096
	maxBacklogBytes = 1 << 20
)

// maxInflight bounds the publishes of one client that wait for the broker.
// Past it the next publish waits (and the read loop with it): a burst from a
// healthy broker's client, never a stall's backlog, since a broker that
// stalls is soon not ready and refuses publishes at once.
const maxInflight = 256

// ConnInfo is what the HTTP layer knows of a connection.
type ConnInfo struct {
	// IP is the client's address, for logs and limits.
	IP string
	// Token is a token sent with the upgrade (?token=), or empty.
	Token string
}

// Serve serves conn until it closes, then unregisters it. A connection that
// arrives while the hub drains is closed with 1012 and a reconnect hint; one
// that arrives after the hub stopped, with 1013. conn must come from Accept;
// Serve owns it from here on.
func (h *Hub) Serve(conn *Conn, info ConnInfo) {
	conn.ws.SetReadLimit(h.cfg.MaxMessageBytes)
	c := &Client{hub: h, conn: conn.ws, raw: conn.raw, ip: info.IP, seq: h.seq.Add(1)}
	c.w.fl = h.flushers[h.nextFl.Add(1)%uint32(len(h.flushers))]
	defer c.endLifetime()
	if code := h.register(c); code != 0 {
		h.metrics.closes.WithLabelValues(codeLabel(code)).Inc()
		reason := "node stopped"
		if code == websocket.StatusServiceRestart {
			reason = wire.ReconnectHint(time.Second)
		}
		conn.ws.Close(code, reason)
		return
	}
	defer h.unregister(c)
	conn.pings.set(c.allowPing)

	c.startKeepalive()
	err := c.start(info.Token)
	if err == nil {
		err = c.readLoop()
	}
	c.guard.stop()
	c.endLifetime()
	c.dispatch.Wait()

	code := c.w.finish(h)
	if code == 0 && unansweredProtocolError(err) {
		code = websocket.StatusProtocolError
		c.closeRaw(code, "protocol error")
	}
	if code == 0 {
		code = closeCodeOf(err)
	} else {
		c.w.wg.Wait() // let the hub's own close handshake finish before cutting
	}
	h.metrics.closes.WithLabelValues(codeLabel(code)).Inc()
	if code == websocket.StatusAbnormalClosure || code == websocket.StatusInternalError {
		h.log.Debug("connection lost", "err", err)
	}
	c.cut()
	c.w.wg.Wait()
}

// lifetime returns a context that ends when the read loop does, making it
// on first use.
func (c *Client) lifetime() context.Context {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithCancel(c.hub.ctx)
		if c.ended {
			c.cancel()
		}
	}
	return c.ctx
}

// endLifetime ends the context lifetime returns, now and for later calls.
func (c *Client) endLifetime() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.ended = true
	if c.cancel != nil {
		c.cancel()
	}
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

// unansweredProtocolError reports whether err is a protocol violation that
// coder/websocket (v1.8) ends the connection for without a close frame of
// its own; every other violation it answers with 1002 itself.
func unansweredProtocolError(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "received unmasked frame from client") ||
		strings.Contains(msg, "received negative payload length")
}

// closeRaw writes a close frame straight to the socket, for a connection
// coder/websocket has given up on without one. Best effort, bounded.
func (c *Client) closeRaw(code websocket.StatusCode, reason string) {
	if c.raw == nil {
		return
	}
	frame := []byte{0x88, byte(2 + len(reason)), byte(code >> 8), byte(code)}
	frame = append(frame, reason...)
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	c.raw.Write(frame)
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads frames until the connection ends, and handles each object.
func (c *Client) readLoop() error {
	for {
		// No context: one would cost every idle connection a timer hook.
		// A stopping hub cuts the socket, which ends the read.
		typ, r, err := c.conn.Reader(context.Background())
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
		if ok, err := c.charge(nil); !ok {
			return err
		}
		c.replyError(wire.ErrorFor(nil, wire.CodeBadRequest, "binary frames are not accepted; send text"))
		return nil
	}
	if !utf8.Valid(frame) {
		c.close(websocket.StatusInvalidFramePayloadData, "frame is not valid UTF-8")
		return errClosed
	}
	return wire.Split(frame, func(line []byte) error {
		c.hub.metrics.received.Inc()
		if ok, err := c.charge(line); !ok {
			return err
		}
		return c.enqueue(line)
	})
}

// charge takes one token from the rate limit for an object that just
// arrived, valid or not, and reports whether it may be carried out. Over the
// limit it replies rate_limited, or closes the connection with 4001 (and
// returns errClosed) when the client persists.
func (c *Client) charge(line []byte) (ok bool, err error) {
	h := c.hub
	switch c.guard.allow(h.cfg.ClientRate, h.cfg.ClientBurst) {
	case allowed:
		return true, nil
	case limitedClose:
		h.metrics.rateLimited.Inc()
		h.log.Info("connection closed: persistently over the rate limit", "ip", c.ip)
		c.close(wire.StatusRateLimited, "rate limited")
		return false, errClosed
	}
	h.metrics.rateLimited.Inc()
	var id []byte
	if line != nil {
		if req, err := wire.Decode(line); err == nil {
			id = req.ID
		} else if e, ok := err.(*wire.Error); ok {
			id = e.ID
		}
	}
	c.replyError(wire.ErrorFor(id, wire.CodeRateLimited, "too many requests; slow down"))
	return false, nil
}

// enqueue carries out the request in line now, or queues it behind one that
// waits for the broker. line is only valid during the call.
func (c *Client) enqueue(line []byte) error {
	c.dmu.Lock()
	for c.busy && (len(c.backlog) >= maxBacklog || c.backlogBytes+len(line) > maxBacklogBytes) {
		ch := make(chan struct{})
		c.roomFor = ch
		c.dmu.Unlock()
		c.hub.metrics.backpressure.Inc()
		select {
		case <-ch:
		case <-c.lifetime().Done():
			return errClosed
		}
		c.dmu.Lock()
	}
	if c.busy {
		c.backlog = append(c.backlog, bytes.Clone(line))
		c.backlogBytes += len(line)
		c.dmu.Unlock()
		return nil
	}
	c.dmu.Unlock()
	return c.handle(line, false)
}

// goDispatch hands the rest of the request being handled, and the ones that
// arrive behind it, to a dispatch goroutine. Called from the read loop only.
func (c *Client) goDispatch(first func() error) {
	c.dmu.Lock()
	c.busy = true
	c.dmu.Unlock()
	c.dispatch.Go(func() {
		err := first()
		for {
			c.dmu.Lock()
			if len(c.backlog) == 0 || err != nil {
				c.backlog, c.backlogBytes = nil, 0
				c.busy = false
				c.wakeReaderLocked()
				c.dmu.Unlock()
				return
			}
			line := c.backlog[0]
			c.backlog[0] = nil
			c.backlog = c.backlog[1:]
			c.backlogBytes -= len(line)
			c.wakeReaderLocked()
			c.dmu.Unlock()
			err = c.handle(line, true)
		}
	})
}

// wakeReaderLocked lets a read loop that waits for room in the backlog go
// on; c.dmu must be held.
func (c *Client) wakeReaderLocked() {
	if c.roomFor != nil {
		close(c.roomFor)
		c.roomFor = nil
	}
}

// handle carries out one client request and replies to it. inDispatch says
// whether it runs on the dispatch goroutine, where it may wait for the
// broker. An error ends the connection (the hub has closed it).
func (c *Client) handle(line []byte, inDispatch bool) error {
	h := c.hub
	req, err := wire.Decode(line)
	if err != nil {
		c.replyError(err.(*wire.Error))
		return nil
	}
	if req.Type == wire.TypeAuth {
		return c.authenticate(req)
	}
	if h.cfg.Authenticator != nil && !c.guard.authenticated() {
		c.reject("authenticate first")
		return errClosed
	}
	switch req.Type {
	case wire.TypeSubscribe:
		return c.subscribe(req, inDispatch)
	case wire.TypeUnsubscribe:
		if !h.leave(c, req.Room) {
			c.replyError(wire.ErrorFor(req.ID, wire.CodeNotSubscribed, "not subscribed to this room"))
			return nil
		}
		c.ackSimple(req.ID)
	case wire.TypePublish:
		c.publish(req)
	case wire.TypePresence:
		c.handlePresence(req, inDispatch)
	}
	return nil
}

func (c *Client) subscribe(req wire.Request, inDispatch bool) error {
	h := c.hub
	if g := c.guard.currentGrant(); g != nil && !g.CanSubscribe(req.Room) {
		h.metrics.forbidden.Inc()
		c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, "the token does not grant subscribing to this room"))
		return nil
	}
	m, existed, err := h.join(c, req.Room)
	switch {
	case errors.Is(err, errTooManyRooms):
		c.replyError(wire.ErrorFor(req.ID, wire.CodeTooLarge, "this connection is in the most rooms allowed"))
		return nil
	case err != nil:
		return nil // the connection is going away
	case existed:
		// Subscribing twice is not an error; the membership goes on as it is.
		r := m.room
		r.mu.Lock()
		pos := wire.Position{}
		if h.history() && r.synced {
			pos = r.positionLocked()
		}
		c.ack(req.ID, r.name, pos, nil)
		r.mu.Unlock()
		h.announce(m, req.Presence)
		return nil
	}
	finish := func(mayBlock bool) error {
		ctx, cancel := context.WithTimeout(c.lifetime(), h.cfg.BrokerTimeout)
		defer cancel()
		return h.finishSubscribe(ctx, m, req, mayBlock)
	}
	err = finish(inDispatch)
	if errors.Is(err, errWouldBlock) {
		// The request outlives the frame it came in: keep a copy of its id.
		req.ID = bytes.Clone(req.ID)
		c.goDispatch(func() error {
			c.subscribed(m, req, finish(true))
			return nil
		})
		return nil
	}
	c.subscribed(m, req, err)
	return nil
}

// subscribed ends a subscribe: with err nil it announces the new member's
// presence; else it undoes the membership and tells the client.
func (c *Client) subscribed(m *member, req wire.Request, err error) {
	if err == nil {
		c.hub.announce(m, req.Presence)
		return
	}
	h := c.hub
	h.leave(c, req.Room)
	if c.lifetime().Err() != nil {
		return // the connection is going away
	}
	h.subscribeFailedLog.Log("room", req.Room, "err", err)
	c.replyError(wire.ErrorFor(req.ID, wire.CodeUnavailable, "the room's subscription could not be made; retry"))
}

func (c *Client) publish(req wire.Request) {
	h := c.hub
	if g := c.guard.currentGrant(); g != nil && !g.CanPublish(req.Room) {
		h.metrics.forbidden.Inc()
		c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, "the token does not grant publishing to this room"))
		return
	}
	if !c.waitInflight() {
		return // the connection is going away
	}
	// The frame's buffer is reused once this returns: the broker and the
	// members keep copies.
	data := bytes.Clone(req.Data)
	id := bytes.Clone(req.ID)
	h.publish(pubsub.Publication{Room: req.Room, Data: data, IdempotencyKey: req.IdempotencyKey}, func(rc pubsub.Receipt, err error) {
		if c.inflight.Add(-1) < maxInflight && c.pubWaiting.Load() {
			c.dmu.Lock()
			if c.pubWait != nil {
				close(c.pubWait)
				c.pubWait = nil
			}
			c.dmu.Unlock()
		}
		if err != nil {
			code, msg := wire.CodeUnavailable, "the message was not handed to the broker; retry"
			if errors.Is(err, pubsub.ErrUncertain) {
				code, msg = wire.CodeTimeout, "the broker did not confirm the message in time; it may be delivered: retry with the same idempotency_key"
			}
			h.publishFailedLog.Log("room", req.Room, "err", err)
			c.replyError(wire.ErrorFor(id, code, msg))
			return
		}
		if len(id) > 0 {
			c.send(wire.AppendPublishAck(nil, id, rc.Offset))
		}
	})
}

// waitInflight takes a slot for a publish, waiting while maxInflight of the
// client's publishes wait for the broker. It reports false when the
// connection ends first.
func (c *Client) waitInflight() bool {
	for {
		if c.inflight.Add(1) <= maxInflight {
			return true
		}
		c.inflight.Add(-1)
		c.dmu.Lock()
		if c.pubWait == nil {
			c.pubWait = make(chan struct{})
		}
		ch := c.pubWait
		c.pubWaiting.Store(true)
		full := c.inflight.Load() >= maxInflight
		c.dmu.Unlock()
		if full {
			c.hub.metrics.backpressure.Inc()
			select {
			case <-ch:
			case <-c.lifetime().Done():
				return false
			}
		}
		c.pubWaiting.Store(false)
	}
}

// ack queues the ack of a subscribe.
func (c *Client) ack(id []byte, room string, pos wire.Position, recovered *bool) {
	if len(id) > 0 {
		c.send(wire.AppendSubscribeAck(nil, id, room, pos, recovered))
	}
}

// ackSimple queues a plain ack.
func (c *Client) ackSimple(id []byte) {
	if len(id) > 0 {
		c.send(wire.AppendAck(nil, id))
	}
}

func (c *Client) replyError(e *wire.Error) {
	c.send(wire.AppendError(nil, e))
}

// leaveAll takes c out of every room for good, and returns its memberships.
func (c *Client) leaveAll() []*member {
	c.roomsMu.Lock()
	defer c.roomsMu.Unlock()
	c.gone = true
	ms := c.rooms
	c.rooms = nil
	return ms
}

// roomNames returns the rooms c is in.
func (c *Client) roomNames() []string {
	c.roomsMu.Lock()
	defer c.roomsMu.Unlock()
	names := make([]string, len(c.rooms))
	for i, m := range c.rooms {
		names[i] = m.room.name
	}
	return names
}

// close closes the connection with code and reason, once, without blocking
// the caller: the close handshake runs in a goroutine of the client's own,
// and the frames still queued are dropped.
func (c *Client) close(code websocket.StatusCode, reason string) {
	if c.w.closeWith(code) {
		c.w.wg.Go(func() { c.conn.Close(code, reason) })
	}
}

// cut closes the connection at once, without a handshake, even while a close
// handshake is waiting on the peer.
func (c *Client) cut() {
	if c.raw != nil {
		c.raw.Close()
	}
	c.conn.CloseNow()
}
