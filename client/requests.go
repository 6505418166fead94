package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Subscribe joins room and calls handler with every message published to it,
// in order, from now on; it returns once the node has acknowledged the
// subscription. While the client is disconnected it waits for the
// connection (bounded by ctx). The subscription lasts across reconnects
// until Unsubscribe. Options add to it (WithPresence).
func (c *Client) Subscribe(ctx context.Context, room string, handler func(Message), opts ...SubscribeOption) (*Subscription, error) {
	return c.SubscribeFrom(ctx, room, "", 0, handler, opts...)
}

// SubscribeOption is an optional setting of a subscription, for Subscribe
// and SubscribeFrom.
type SubscribeOption func(*Subscription)

// WithPresence asks the node for the room's presence events: handler is
// called with a join when a member enters the room (this client's own entry
// too, normally just after the subscription's ack) and a leave when one
// goes (it unsubscribed, closed, was cut, or its node drained or died), on
// the client's read goroutine, in order with the room's messages. The
// subscription asks for them again on every reconnect; events of the time
// the client was disconnected are lost, and its own entry comes back with a
// new Client id. Events are idempotent by Client: keep a set keyed by it
// (join adds, leave deletes).
//
// handler also receives snapshots (Type "presence", with Count and
// Members): when a node loses and regains its broker's subscription to the
// room, join and leave events may have been missed, so it sends the room's
// members (at most its HUB_PRESENCE_LIMIT; Count is the total). A snapshot
// replaces the member set kept so far; the join and leave events after it
// apply to it as usual.
func WithPresence(handler func(PresenceEvent)) SubscribeOption {
	return func(s *Subscription) { s.presence = handler }
}

// Member is one connection in a room.
type Member struct {
	// Client is the connection's id, made by its node, unique in the
	// cluster; a reconnect gets a new one.
	Client string `json:"client"`
	// User is the token's sub ("" when the node runs without auth).
	User string `json:"user"`
	// Node is the id of the node the connection is on.
	Node string `json:"node"`
}

// Presence is who is in a room.
type Presence struct {
	Room string
	// Count is the number of members in the cluster.
	Count int
	// Members lists them, at most the node's HUB_PRESENCE_LIMIT (so
	// possibly fewer than Count).
	Members []Member
}

// PresenceEvent is a member entering (Type "join") or leaving ("leave") a
// room, or the node's snapshot of the room's members (Type "presence"),
// which replaces the member set; see WithPresence.
type PresenceEvent struct {
	Type string // "join", "leave" or "presence"
	Room string
	// Client, User and Node are the member of a join or leave, as in
	// Member (empty for a snapshot).
	Client, User, Node string
	// Count and Members are a snapshot's, as in Presence: the number of
	// members in the cluster, and at most HUB_PRESENCE_LIMIT of them (zero
	// and nil for a join or leave).
	Count   int
	Members []Member
}

// Presence asks the node who is in room now, across the cluster. The client
// need not be subscribed to room, only allowed to subscribe to it. While the
// client is disconnected it waits for the connection (bounded by ctx), and a
// request whose connection breaks is asked again on the next one. An *Error
// is the node's refusal (forbidden, bad_room, or unavailable: retry).
func (c *Client) Presence(ctx context.Context, room string) (Presence, error) {
	for {
		cn, err := c.connected(ctx)
		if err != nil {
			return Presence{}, err
		}
		obj, err := c.roundTrip(ctx, cn, &request{frame: map[string]any{"type": "presence", "room": room}})
		if errors.Is(err, ErrNotConnected) {
			continue // the connection went before the answer: ask the next one
		}
		if err != nil {
			return Presence{}, err
		}
		p := Presence{Room: room}
		json.Unmarshal(obj["room"], &p.Room)
		json.Unmarshal(obj["count"], &p.Count)
		if raw := obj["members"]; raw != nil {
			if err := json.Unmarshal(raw, &p.Members); err != nil {
				return Presence{}, fmt.Errorf("hubcluster: presence %q: %w", room, err)
			}
		}
		return p, nil
	}
}

// SubscribeFrom is Subscribe from a place in the room's history that the
// application kept (a Subscription's Position, stored across a restart):
// the node first delivers every message after offset of epoch, then the
// live ones, and OnRecovered says whether it could; when it could not (the
// history moved on), OnGap is called and the subscription goes on from the
// room's current place. An empty epoch subscribes from now, as Subscribe.
func (c *Client) SubscribeFrom(ctx context.Context, room, epoch string, offset uint64, handler func(Message), opts ...SubscribeOption) (*Subscription, error) {
	s := &Subscription{c: c, room: room, handler: handler, epoch: epoch, offset: offset}
	for _, o := range opts {
		o(s)
	}
	c.mu.Lock()
	if c.subs[room] != nil {
		c.mu.Unlock()
		return nil, ErrSubscribed
	}
	c.subs[room] = s
	c.mu.Unlock()
	for {
		cn, err := c.connected(ctx)
		if err != nil {
			c.forget(s)
			return nil, err
		}
		_, err = c.roundTrip(ctx, cn, c.subscribeRequest(s))
		if errors.Is(err, ErrNotConnected) {
			continue // the connection went; the next one subscribes it again
		}
		if err != nil {
			c.forget(s)
			return nil, err
		}
		return s, nil
	}
}

func (c *Client) forget(s *Subscription) {
	c.mu.Lock()
	if c.subs[s.room] == s {
		delete(c.subs, s.room)
	}
	c.mu.Unlock()
}

// subscribeRequest is the subscribe for s, with since when s has a place in
// the room's history already, and presence when s asks for its events.
func (c *Client) subscribeRequest(s *Subscription) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := map[string]any{"type": "subscribe", "room": s.room}
	if s.presence != nil {
		f["presence"] = true
	}
	if s.epoch != "" {
		f["since"] = map[string]any{"offset": s.offset, "epoch": s.epoch}
		s.recovering, s.recovered = true, 0
	}
	return &request{frame: f, sub: s}
}

// Unsubscribe leaves the room; its handlers are not called again.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	c := s.c
	c.forget(s)
	c.mu.Lock()
	cn := c.conn
	c.mu.Unlock()
	if cn == nil {
		return nil // the next connection does not subscribe it
	}
	_, err := c.roundTrip(ctx, cn, &request{frame: map[string]any{"type": "unsubscribe", "room": s.room}})
	var e *Error
	if errors.As(err, &e) && e.Code == "not_subscribed" || errors.Is(err, ErrNotConnected) {
		return nil
	}
	return err
}

// Receipt is the node's answer to a publication.
type Receipt struct {
	// Offset is the message's place in the room's history (0 when the node
	// keeps no history).
	Offset uint64
	// Key is the idempotency key it was published with.
	Key string
}

// PublishOptions are optional settings of one publication.
type PublishOptions struct {
	// IdempotencyKey is the publication's key (default: a fresh random
	// one). Publishing again with the same key within the node's history
	// TTL delivers the message once.
	IdempotencyKey string
}

// Publish publishes data (any value encoding/json marshals, or a
// json.RawMessage) to room and waits for the node's ack. While the client is
// disconnected the publication waits for the connection, QueueTimeout at
// most. An *Error is the node's refusal (code unavailable: not delivered,
// retry; timeout: it may be delivered, retry with the same key).
func (c *Client) Publish(ctx context.Context, room string, data any, opts *PublishOptions) (Receipt, error) {
	raw, ok := data.(json.RawMessage)
	if !ok {
		b, err := json.Marshal(data)
		if err != nil {
			return Receipt{}, fmt.Errorf("hubcluster: publish: %w", err)
		}
		raw = b
	}
	key := ""
	if opts != nil {
		key = opts.IdempotencyKey
	}
	if key == "" {
		key = newKey()
	}
	r := &request{frame: map[string]any{"type": "publish", "room": room, "data": raw, "idempotency_key": key},
		publish: true, reply: make(chan reply, 1)}
	c.mu.Lock()
	if c.stopErr != nil {
		err := c.stopErr
		c.mu.Unlock()
		return Receipt{}, err
	}
	cn := c.conn
	if cn == nil {
		if len(c.queue) >= c.opts.QueueSize {
			c.mu.Unlock()
			return Receipt{}, ErrQueueFull
		}
		c.queue = append(c.queue, r)
	}
	c.mu.Unlock()
	wait := c.opts.QueueTimeout
	if cn != nil {
		c.send(cn, r)
		wait = c.opts.RequestTimeout
	}
	queueTimer := time.NewTimer(wait)
	defer queueTimer.Stop()
	var answerTimer <-chan time.Time
	for {
		select {
		case rep := <-r.reply:
			if rep.err != nil {
				return Receipt{Key: key}, rep.err
			}
			var off uint64
			json.Unmarshal(rep.obj["offset"], &off)
			return Receipt{Offset: off, Key: key}, nil
		case <-queueTimer.C:
			if c.unqueue(r) {
				c.mu.Lock()
				sentOnce := r.everSent
				c.mu.Unlock()
				if sentOnce {
					// It went out once, on a connection that broke before
					// the answer: it may have been delivered.
					return Receipt{Key: key}, ErrTimeout
				}
				return Receipt{Key: key}, ErrNotConnected
			}
			answerTimer = time.After(c.opts.RequestTimeout) // it was sent meanwhile
		case <-answerTimer:
			return Receipt{Key: key}, ErrTimeout
		case <-ctx.Done():
			c.mu.Lock()
			sentOnce := r.everSent
			c.mu.Unlock()
			if c.unqueue(r) && !sentOnce {
				return Receipt{Key: key}, ctx.Err()
			}
			return Receipt{Key: key}, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
		}
	}
}

// unqueue takes r out of the queue, and reports whether it was still there
// (never sent).
func (c *Client) unqueue(r *request) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.queue {
		if q == r {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			return true
		}
	}
	return false
}

// connected waits until the client is connected, and returns the connection.
func (c *Client) connected(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		cn, up, err := c.conn, c.up, c.stopErr
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if cn != nil {
			return cn, nil
		}
		select {
		case <-up:
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// roundTrip sends r on cn and waits for its answer.
func (c *Client) roundTrip(ctx context.Context, cn *conn, r *request) (map[string]json.RawMessage, error) {
	if r.reply == nil {
		r.reply = make(chan reply, 1)
	}
	c.send(cn, r)
	t := time.NewTimer(c.opts.RequestTimeout)
	defer t.Stop()
	select {
	case rep := <-r.reply:
		return rep.obj, rep.err
	case <-t.C:
		return nil, ErrTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send gives r an id and writes it on cn. A write that fails breaks the
// connection, which answers r (or queues it again) once the reader ends.
func (c *Client) send(cn *conn, r *request) {
	c.mu.Lock()
	select {
	case <-cn.done:
		// The connection is gone: a publication waits for the next one.
		if r.publish && c.stopErr == nil && c.ctx.Err() == nil {
			c.queue = append(c.queue, r)
		} else {
			r.reply <- reply{err: ErrNotConnected}
		}
		c.mu.Unlock()
		return
	default:
	}
	c.nextID++
	id := "c" + strconv.FormatUint(c.nextID, 10)
	r.frame["id"] = id
	r.sent, r.everSent = true, true
	cn.pending[id] = r
	c.mu.Unlock()
	b, err := json.Marshal(r.frame)
	if err != nil {
		c.answer(cn, id, reply{err: err})
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.RequestTimeout)
	defer cancel()
	if err := cn.ws.Write(ctx, websocket.MessageText, b); err != nil {
		cn.ws.CloseNow()
	}
}

// answer hands rep to the request id of cn, if it still waits.
func (c *Client) answer(cn *conn, id string, rep reply) {
	c.mu.Lock()
	r := cn.pending[id]
	delete(cn.pending, id)
	c.mu.Unlock()
	if r != nil {
		r.reply <- rep
	}
}

// readLoop reads what the node sends on cn until it ends.
func (c *Client) readLoop(cn *conn) {
	defer close(cn.done)
	for {
		_, p, err := cn.ws.Read(context.Background())
		if err != nil {
			cn.err = err
			return
		}
		for line := range bytes.SplitSeq(p, []byte("\n")) {
			line = bytes.TrimSpace(line)
			if len(line) > 0 {
				c.handle(cn, line)
			}
		}
	}
}

// handle takes one object from the node.
func (c *Client) handle(cn *conn, line []byte) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return
	}
	var typ, room, id string
	json.Unmarshal(obj["type"], &typ)
	json.Unmarshal(obj["room"], &room)
	json.Unmarshal(obj["id"], &id)
	switch typ {
	case "message":
		var off uint64
		json.Unmarshal(obj["offset"], &off)
		c.mu.Lock()
		s := c.subs[room]
		if s != nil {
			if off != 0 {
				s.offset = off
			}
			if s.recovering {
				s.recovered++
			}
		}
		c.mu.Unlock()
		if s != nil && s.handler != nil {
			s.handler(Message{Room: room, Offset: off, Data: obj["data"]})
		}
	case "ack":
		c.mu.Lock()
		r := cn.pending[id]
		c.mu.Unlock()
		if r != nil && r.sub != nil {
			c.acked(r.sub, obj)
		}
		c.answer(cn, id, reply{obj: obj})
	case "error":
		var code, msg string
		json.Unmarshal(obj["code"], &code)
		json.Unmarshal(obj["message"], &msg)
		e := &Error{Code: code, Message: msg}
		c.mu.Lock()
		_, waiting := cn.pending[id]
		c.mu.Unlock()
		if id != "" && waiting {
			c.answer(cn, id, reply{err: e})
		} else if c.opts.OnError != nil {
			c.opts.OnError(e)
		}
	case "presence":
		// A reply is matched by its id only: a presence object with no id,
		// or one no request waits for, is the node's snapshot of the room
		// (sent after it regained its broker's subscription to it).
		c.mu.Lock()
		_, waiting := cn.pending[id]
		s := c.subs[room]
		c.mu.Unlock()
		if id != "" && waiting {
			c.answer(cn, id, reply{obj: obj})
			return
		}
		if s == nil || s.presence == nil {
			return
		}
		ev := PresenceEvent{Type: typ, Room: room, Members: []Member{}}
		if raw := obj["members"]; raw != nil && json.Unmarshal(raw, &ev.Members) != nil {
			return // not a snapshot this client understands
		}
		ev.Count = len(ev.Members)
		json.Unmarshal(obj["count"], &ev.Count)
		s.presence(ev)
	case "join", "leave":
		c.mu.Lock()
		s := c.subs[room]
		c.mu.Unlock()
		if s != nil && s.presence != nil {
			ev := PresenceEvent{Type: typ, Room: room}
			json.Unmarshal(obj["client"], &ev.Client)
			json.Unmarshal(obj["user"], &ev.User)
			json.Unmarshal(obj["node"], &ev.Node)
			s.presence(ev)
		}
	case "gap":
		if c.opts.OnGap != nil {
			c.opts.OnGap(room)
		}
	case "unsubscribed":
		var code, msg string
		json.Unmarshal(obj["code"], &code)
		json.Unmarshal(obj["message"], &msg)
		c.mu.Lock()
		delete(c.subs, room)
		c.mu.Unlock()
		if c.opts.OnUnsubscribed != nil {
			c.opts.OnUnsubscribed(room, code, msg)
		}
	}
}

// acked takes the ack of a subscribe: where the room stands, and whether a
// recovery worked.
func (c *Client) acked(s *Subscription, obj map[string]json.RawMessage) {
	var epoch string
	var off uint64
	var recovered *bool
	json.Unmarshal(obj["epoch"], &epoch)
	json.Unmarshal(obj["offset"], &off)
	json.Unmarshal(obj["recovered"], &recovered)
	c.mu.Lock()
	if epoch != "" {
		s.epoch = epoch
		s.offset = off
	}
	n, was := s.recovered, s.recovering
	s.recovering, s.recovered = false, 0
	c.mu.Unlock()
	if was && recovered != nil && c.opts.OnRecovered != nil {
		c.opts.OnRecovered(s.room, n, *recovered)
	}
}

func newKey() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}
