package hubtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Client is a WebSocket client of a node for tests. A goroutine of its own
// reads every frame the node sends, splits it into its newline-separated JSON
// objects and queues them, without bound: a test that reads late never holds
// the node up, and nothing is dropped. The connection is closed, and the
// reading goroutine waited for, when the test ends; that cannot hang.
//
// Send, Next, NextOfType, ExpectNothing, Subscribe, Closed and CloseStatus
// fail the test and must be called from the test's goroutine. TrySend,
// TryNext, Conn and CloseNow may be called from any goroutine.
type Client struct {
	tb     testing.TB
	conn   *websocket.Conn
	cancel context.CancelFunc // ends the read loop's context

	mu     sync.Mutex
	queue  []map[string]any
	err    error         // why reading ended; set before done is closed
	notify chan struct{} // capacity 1: an object was queued
	done   chan struct{} // closed when reading ended
}

// dialTimeout bounds a dial, a write, and the acks Subscribe waits for.
const dialTimeout = 10 * time.Second

// Dial connects to url (ws://host:port/path) and fails the test if it cannot.
func Dial(tb testing.TB, url string, opts *websocket.DialOptions) *Client {
	tb.Helper()
	c, resp, err := TryDial(tb, url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		tb.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	return c
}

// TryDial connects to url and returns the client, or the error and, when the
// server answered, its response (a refused upgrade's status). It does not fail
// the test and may be called from any goroutine.
func TryDial(tb testing.TB, url string, opts *websocket.DialOptions) (*Client, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(-1)
	return newClient(tb, conn), resp, nil
}

func newClient(tb testing.TB, conn *websocket.Conn) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{tb: tb, conn: conn, cancel: cancel, notify: make(chan struct{}, 1), done: make(chan struct{})}
	go c.readLoop(ctx)
	tb.Cleanup(func() {
		cancel()
		conn.CloseNow()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second): // not expected: the read loop never blocks
			tb.Errorf("hubtest: a client's read loop did not end within 30s of its close")
		}
	})
	return c
}

// readLoop queues what the connection carries until it ends. It blocks on
// nothing but the connection.
func (c *Client) readLoop(ctx context.Context) {
	defer close(c.done)
	for {
		_, p, err := c.conn.Read(ctx)
		if err != nil {
			c.end(err)
			return
		}
		var objs []map[string]any
		for line := range bytes.SplitSeq(p, []byte("\n")) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				c.end(fmt.Errorf("hubtest: the server sent a line that is not a JSON object: %q: %w", line, err))
				c.conn.CloseNow()
				return
			}
			objs = append(objs, m)
		}
		c.mu.Lock()
		c.queue = append(c.queue, objs...)
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

func (c *Client) end(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// pop returns the next queued object, if any, and whether reading has ended.
func (c *Client) pop() (m map[string]any, ok, ended bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) > 0 {
		m = c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		return m, true, false
	}
	select {
	case <-c.done:
		return nil, false, true
	default:
		return nil, false, false
	}
}

// Conn is the underlying connection, for what the other methods do not cover
// (binary frames, a close handshake). Do not read from it.
func (c *Client) Conn() *websocket.Conn { return c.conn }

// Done is closed when the connection has ended (objects not read yet stay
// queued). It may be used from any goroutine.
func (c *Client) Done() <-chan struct{} { return c.done }

// CloseNow closes the connection without a close handshake.
func (c *Client) CloseNow() { c.conn.CloseNow() }

// TrySend writes fmt.Sprintf(format, args...) as one text frame and returns
// the error. It does not fail the test and may be called from any goroutine.
func (c *Client) TrySend(format string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, format, args...))
}

// Send writes fmt.Sprintf(format, args...) as one text frame, and fails the
// test if it cannot.
func (c *Client) Send(format string, args ...any) {
	c.tb.Helper()
	if err := c.TrySend(format, args...); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
}

// Next returns the next object the server sent, failing the test when none
// comes within timeout or the connection ends first.
func (c *Client) Next(timeout time.Duration) map[string]any {
	c.tb.Helper()
	m, err := c.TryNext(timeout)
	if err != nil {
		c.tb.Fatalf("%v", err)
	}
	return m
}

// TryNext returns the next object the server sent, or an error when none
// comes within timeout or the connection ends first. It does not fail the
// test and may be called from any goroutine.
func (c *Client) TryNext(timeout time.Duration) (map[string]any, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		m, ok, ended := c.pop()
		if ok {
			return m, nil
		}
		if ended {
			return nil, fmt.Errorf("connection ended while waiting for an object: %v", c.readErr())
		}
		select {
		case <-c.notify:
		case <-c.done:
		case <-timer.C:
			return nil, fmt.Errorf("nothing received in %v", timeout)
		}
	}
}

// NextOfType skips objects of other types until one of type typ arrives,
// failing the test when none does within timeout.
func (c *Client) NextOfType(typ string, timeout time.Duration) map[string]any {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := c.Next(time.Until(deadline)); m["type"] == typ {
			return m
		}
	}
}

// ExpectNothing fails the test if an object arrives within d, or is queued
// already.
func (c *Client) ExpectNothing(d time.Duration) {
	c.tb.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		if m, ok, _ := c.pop(); ok {
			c.tb.Fatalf("got %v, want nothing", m)
			return
		}
		select {
		case <-c.notify:
		case <-timer.C:
			return
		}
	}
}

// Subscribe joins room and checks that the next object is its ack.
func (c *Client) Subscribe(room string) {
	c.tb.Helper()
	c.Send(`{"type":"subscribe","room":%q,"id":"sub-%s"}`, room, room)
	if m := c.Next(dialTimeout); m["type"] != "ack" || m["id"] != "sub-"+room {
		c.tb.Fatalf("subscribe %s: got %v, want its ack", room, m)
	}
}

// Closed waits until the connection has ended, failing the test if it has
// not within timeout, and returns the error reading ended with. Objects not
// read yet stay queued.
func (c *Client) Closed(timeout time.Duration) error {
	c.tb.Helper()
	select {
	case <-c.done:
		return c.readErr()
	case <-time.After(timeout):
		c.tb.Fatalf("the connection did not end within %v", timeout)
		return nil
	}
}

// CloseStatus waits for the connection to end (see Closed) and returns the
// code and reason of the close frame the server sent; code is -1 when the
// connection ended without one (cut, or closed by this side).
func (c *Client) CloseStatus(timeout time.Duration) (websocket.StatusCode, string) {
	c.tb.Helper()
	err := c.Closed(timeout)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		return -1, ""
	}
	return ce.Code, ce.Reason
}

func (c *Client) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
