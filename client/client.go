// Package client is the Go client of hubcluster: it connects to a node (or a
// load balancer in front of many), subscribes to rooms and publishes to them,
// and keeps the connection up by itself. It speaks protocol v1.1
// (docs/protocol.md).
//
// A Client reconnects after a drain (close 1012) at the delay the node hints,
// and after a lost connection or an overloaded node (1006, 1013, ...) with
// jittered exponential backoff; it does not reconnect after a policy, size or
// encoding close (1008, 1009, 1007), nor after an operator's disconnect
// (4100 to 4999, POST /v1/disconnect), which it reports: Err returns the
// *CloseError, OnState is called with Closed and the close's code and reason,
// and Done is closed. On every reconnect it subscribes to its rooms again
// with the offset it delivered last, so a handler sees every message of a
// room exactly once, in order, across a deploy; when the node cannot recover
// a range (it is past the history's window, or the history was lost) the
// client reports a gap for the room and goes on from the room's current
// place.
//
// Presence asks who is in a room, cluster-wide. A subscription made with
// WithPresence also receives the room's join and leave events, and asks for
// them again on every reconnect; events are not recovered, so those of the
// time the client was disconnected are lost (call Presence to rebuild a
// member list after OnState reports Connected again). When the node itself
// may have missed some (it lost and regained its broker's subscription to
// the room), it sends the subscription a snapshot of the room's members,
// which replaces the member set (see WithPresence).
//
// Publish waits for the node's ack. Every publication carries an idempotency
// key, so one the client sends again after a reconnect is delivered once.
// Publications made while the client is disconnected wait, in a bounded queue
// and for a bounded time, and are sent when it is back; one that cannot be
// sent in that time fails with ErrNotConnected and was certainly not
// delivered.
//
// All methods may be called concurrently. Handlers and callbacks run on the
// client's read goroutine, one at a time, in the order the node sent the
// messages: they must not block for long, and must not call the Client's
// blocking methods (Subscribe, SubscribeFrom, Unsubscribe, Publish,
// Presence).
package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ProtocolVersion is the version of the wire protocol the client speaks.
const ProtocolVersion = "1.1"

// Message is one message published to a room.
type Message struct {
	Room string
	// Offset is the message's place in the room's history, from 1 (0 when
	// the node keeps no history).
	Offset uint64
	// Data is the message's JSON.
	Data json.RawMessage
}

// State is where the connection stands.
type State int

const (
	Connecting State = iota
	Connected
	Disconnected
	Closed // Close was called, or the node refused for good (1007, 1008, 1009, 4100-4999)
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	default:
		return "closed"
	}
}

// Options configure a Client. Zero values take the defaults noted.
type Options struct {
	// URLs are more node addresses (ws://host:port/ws) to try after the first
	// one, round robin, when reconnecting: for clusters without a load
	// balancer in front.
	URLs []string
	// Token returns the connection token (a JWT); nil connects without one.
	// It is called on every connect, and again RefreshBefore (default 30s)
	// before the token's exp, so it can hand out a fresh one.
	Token         func(ctx context.Context) (string, error)
	RefreshBefore time.Duration
	// HTTPHeader is sent with the WebSocket upgrade (for example an Origin).
	HTTPHeader http.Header
	// HTTPClient makes the upgrade request (default: http.DefaultClient).
	HTTPClient *http.Client
	// RequestTimeout bounds how long a request waits for the node's answer
	// once sent, and a connection attempt (default 10s).
	RequestTimeout time.Duration
	// QueueTimeout bounds how long a publication made while disconnected
	// waits for the connection (default 10s); QueueSize how many may wait
	// (default 1024).
	QueueTimeout time.Duration
	QueueSize    int
	// MinBackoff and MaxBackoff bound the jittered exponential wait between
	// reconnects after a lost connection (default 100ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// OnState is called when the connection's state changes; code and reason
	// are the close's, when there was one (code -1 otherwise).
	OnState func(s State, code int, reason string)
	// OnGap is called when messages of a room may have been lost and will not
	// be delivered.
	OnGap func(room string)
	// OnRecovered is called after a resubscription that asked to recover: n
	// messages came from the room's history; ok is false when the range
	// could not be recovered (OnGap was called too).
	OnRecovered func(room string, n int, ok bool)
	// OnError is called with error objects that answer no request of this
	// client, and with failures of a token refresh.
	OnError func(err error)
	// OnUnsubscribed is called when the node took the client out of a room
	// (a token refresh that no longer grants it, an operator).
	OnUnsubscribed func(room, code, message string)
}

// Error is an error reply from the node.
type Error struct {
	Code    string // bad_request, forbidden, unavailable, timeout, ...
	Message string
}

func (e *Error) Error() string { return "hubcluster: " + e.Code + ": " + e.Message }

// Errors of the client itself.
var (
	ErrClosed = errors.New("hubcluster: client closed")
	// ErrTimeout: a request was sent and no answer came in time. A
	// publication may or may not have been delivered.
	ErrTimeout = errors.New("hubcluster: no answer in time")
	// ErrQueueFull and ErrNotConnected: a publication was not sent.
	ErrQueueFull    = errors.New("hubcluster: too many publications wait for the connection")
	ErrNotConnected = errors.New("hubcluster: not connected in time")
	ErrSubscribed   = errors.New("hubcluster: already subscribed to this room")
)

// CloseError is how the node ended a connection for good: a policy, size or
// encoding close (1008, 1009, 1007), or an operator's disconnect (4100 to
// 4999, with the operator's reason).
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("hubcluster: closed by the node: %d %s", e.Code, e.Reason)
}

// Subscription is the client's membership of one room.
type Subscription struct {
	c       *Client
	room    string
	handler func(Message)
	// presence receives the room's join and leave events (nil: the
	// subscription does not ask for them).
	presence func(PresenceEvent)
	// Guarded by Client.mu:
	epoch      string
	offset     uint64 // the last offset delivered
	recovering bool
	recovered  int
}

// Room returns the subscription's room.
func (s *Subscription) Room() string { return s.room }

// Position returns the room's epoch and the offset delivered last.
func (s *Subscription) Position() (epoch string, offset uint64) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.epoch, s.offset
}

// Client is a connection to a hubcluster node that reconnects by itself.
type Client struct {
	opts Options

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the run loop has ended

	mu      sync.Mutex // guards the fields below
	urls    []string
	state   State
	conn    *conn
	up      chan struct{} // closed while connected; replaced on disconnect
	subs    map[string]*Subscription
	queue   []*request // publications waiting for a connection
	nextID  uint64
	stopErr error
}

// conn is one WebSocket connection of the client.
type conn struct {
	ws      *websocket.Conn
	done    chan struct{} // closed when the reader has ended
	err     error         // why the reader ended, set before done is closed
	pending map[string]*request
	refresh *time.Timer
}

// request is one request waiting for its answer.
type request struct {
	frame   map[string]any
	publish bool
	sub     *Subscription // a subscribe, to update on its ack
	reply   chan reply    // capacity 1
	sent    bool
	// everSent: it went out on a connection once (that then broke): a
	// publication that is not answered in time may have been delivered.
	everSent bool
}

type reply struct {
	obj map[string]json.RawMessage
	err error
}

// Dial connects to url (ws://host:port/ws) and returns a Client that stays
// connected until Close. It returns an error when the first connection
// fails.
func Dial(ctx context.Context, url string, opts *Options) (*Client, error) {
	c := newClient(url, opts)
	if err := c.connect(ctx); err != nil {
		c.cancel()
		return nil, err
	}
	go c.run()
	return c, nil
}

func newClient(url string, opts *Options) *Client {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.RefreshBefore <= 0 {
		o.RefreshBefore = 30 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.QueueTimeout <= 0 {
		o.QueueTimeout = 10 * time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(o.MinBackoff, 10*time.Second)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		opts: o, urls: append([]string{url}, o.URLs...),
		ctx: ctx, cancel: cancel, done: make(chan struct{}),
		subs: make(map[string]*Subscription), up: make(chan struct{}),
	}
}

// State returns where the connection stands.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Err returns why the client stopped for good (a *CloseError from the node,
// or ErrClosed), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopErr
}

// Done is closed when the client has stopped for good.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection and stops reconnecting. Requests still waiting
// fail with ErrClosed.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	cn := c.conn
	c.mu.Unlock()
	if cn != nil {
		go cn.ws.Close(websocket.StatusNormalClosure, "")
	}
	<-c.done
	return nil
}

func (c *Client) setState(s State, code int, reason string) {
	c.mu.Lock()
	changed := c.state != s
	c.state = s
	c.mu.Unlock()
	if changed && c.opts.OnState != nil {
		c.opts.OnState(s, code, reason)
	}
}

// connect makes one connection: dial the next URL, authenticate, subscribe
// to every room again (recovering), then send what waits in the queue.
func (c *Client) connect(ctx context.Context) error {
	c.setState(Connecting, -1, "")
	c.mu.Lock()
	url := c.urls[0]
	c.urls = append(c.urls[1:], url)
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: c.opts.HTTPHeader, HTTPClient: c.opts.HTTPClient})
	if err != nil {
		return fmt.Errorf("hubcluster: dial %s: %w", url, err)
	}
	ws.SetReadLimit(-1)
	cn := &conn{ws: ws, done: make(chan struct{}), pending: make(map[string]*request)}
	go c.readLoop(cn)
	fail := func(err error) error {
		ws.CloseNow()
		<-cn.done
		if cn.refresh != nil {
			cn.refresh.Stop()
		}
		var ce websocket.CloseError
		if errors.As(cn.err, &ce) && finalCode(int(ce.Code)) {
			return &CloseError{Code: int(ce.Code), Reason: ce.Reason}
		}
		return err
	}
	if c.opts.Token != nil {
		token, err := c.opts.Token(ctx)
		if err != nil {
			return fail(fmt.Errorf("hubcluster: token: %w", err))
		}
		if _, err := c.roundTrip(ctx, cn, &request{frame: map[string]any{"type": "auth", "token": token}}); err != nil {
			return fail(err)
		}
		c.scheduleRefresh(cn, token)
	}
	c.mu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		if _, err := c.roundTrip(ctx, cn, c.subscribeRequest(s)); err != nil {
			var e *Error
			if errors.As(err, &e) && e.Code != "unavailable" && e.Code != "rate_limited" {
				// The node will not have this room again (forbidden now):
				// drop it, and say so.
				c.mu.Lock()
				delete(c.subs, s.room)
				c.mu.Unlock()
				if c.opts.OnUnsubscribed != nil {
					c.opts.OnUnsubscribed(s.room, e.Code, e.Message)
				}
				continue
			}
			return fail(err)
		}
	}
	c.mu.Lock()
	c.conn = cn
	close(c.up)
	queue := c.queue
	c.queue = nil
	c.mu.Unlock()
	c.setState(Connected, -1, "")
	for _, r := range queue {
		c.send(cn, r)
	}
	return nil
}

// run keeps the client connected until Close or a final close.
func (c *Client) run() {
	defer close(c.done)
	backoff := c.opts.MinBackoff
	for {
		c.mu.Lock()
		cn := c.conn
		c.mu.Unlock()
		select {
		case <-cn.done:
		case <-c.ctx.Done():
			cn.ws.Close(websocket.StatusNormalClosure, "")
			<-cn.done
		}
		code, reason := c.disconnected(cn)
		if c.ctx.Err() != nil {
			c.stop(ErrClosed, code, reason)
			return
		}
		if finalCode(code) {
			c.stop(&CloseError{Code: code, Reason: reason}, code, reason)
			return
		}
		c.setState(Disconnected, code, reason)
		wait := jitter(backoff)
		if hint, ok := parseHint(code, reason); ok {
			wait, backoff = hint, c.opts.MinBackoff
		}
		for {
			select {
			case <-time.After(wait):
			case <-c.ctx.Done():
				c.stop(ErrClosed, code, reason)
				return
			}
			err := c.connect(c.ctx)
			if err == nil {
				backoff = c.opts.MinBackoff
				break
			}
			var ce *CloseError
			if errors.As(err, &ce) {
				c.stop(ce, ce.Code, ce.Reason)
				return
			}
			c.setState(Disconnected, -1, err.Error())
			backoff = min(2*backoff, c.opts.MaxBackoff)
			wait = jitter(backoff)
		}
	}
}

// disconnected tidies up after cn ended, and returns its close code and
// reason (-1 when the connection just went away).
func (c *Client) disconnected(cn *conn) (code int, reason string) {
	c.mu.Lock()
	if c.conn == cn {
		c.conn = nil
	}
	select {
	case <-c.up:
		c.up = make(chan struct{})
	default:
	}
	if cn.refresh != nil {
		cn.refresh.Stop()
	}
	// Requests in flight: publications wait for the next connection (their
	// idempotency key makes a second send safe); others fail, and a
	// subscription is made again on the next connection anyway.
	for id, r := range cn.pending {
		delete(cn.pending, id)
		if r.publish && c.ctx.Err() == nil {
			r.sent = false
			c.queue = append(c.queue, r)
			continue
		}
		r.reply <- reply{err: ErrNotConnected}
	}
	c.mu.Unlock()
	var ce websocket.CloseError
	if errors.As(cn.err, &ce) {
		return int(ce.Code), ce.Reason
	}
	return -1, ""
}

// finalCode reports whether a close with code ends the client for good: a
// policy, size or encoding close, or an operator's disconnect (4100 to 4999;
// 4000 to 4099 are the node's own, such as a slow consumer, and are retried).
func finalCode(code int) bool {
	switch websocket.StatusCode(code) {
	case websocket.StatusPolicyViolation, websocket.StatusMessageTooBig, websocket.StatusInvalidFramePayloadData:
		return true
	}
	return code >= 4100 && code <= 4999
}

// parseHint reads the reconnect delay of a drain (1012).
func parseHint(code int, reason string) (time.Duration, bool) {
	if code != int(websocket.StatusServiceRestart) {
		return 0, false
	}
	var h struct {
		MS *int64 `json:"reconnect_after_ms"`
	}
	if json.Unmarshal([]byte(reason), &h) != nil || h.MS == nil || *h.MS < 0 {
		return time.Second, true
	}
	return time.Duration(*h.MS) * time.Millisecond, true
}

func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// stop ends the client for good: everything waiting fails with err.
func (c *Client) stop(err error, code int, reason string) {
	c.mu.Lock()
	c.stopErr = err
	for _, r := range c.queue {
		r.reply <- reply{err: err}
	}
	c.queue = nil
	c.mu.Unlock()
	c.setState(Closed, code, reason)
}

// scheduleRefresh sends a fresh token on cn before token expires.
func (c *Client) scheduleRefresh(cn *conn, token string) {
	exp, ok := tokenExpiry(token)
	if !ok {
		return
	}
	d := max(time.Until(exp)-c.opts.RefreshBefore, time.Until(exp)/2, time.Second)
	cn.refresh = time.AfterFunc(d, func() {
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.RequestTimeout)
		defer cancel()
		fresh, err := c.opts.Token(ctx)
		if err == nil {
			_, err = c.roundTrip(ctx, cn, &request{frame: map[string]any{"type": "auth", "token": fresh}})
		}
		if err != nil {
			if c.opts.OnError != nil {
				c.opts.OnError(fmt.Errorf("hubcluster: token refresh: %w", err))
			}
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		select {
		case <-cn.done:
		default:
			c.scheduleRefresh(cn, fresh)
		}
	})
}

// tokenExpiry reads the exp of a JWT, without verifying it.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}, false
	}
	sec, err := strconv.ParseFloat(string(claims.Exp), 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(sec), 0), true
}
