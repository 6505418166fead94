package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/pubsub"
)

// pipeListener is a net.Listener whose connections are net.Pipe pairs, so a hub
// can be served inside a synctest bubble with no real socket.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	server, client := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// testNode is a hub served over a pipeListener by a real http.Server.
type testNode struct {
	t      *testing.T
	hub    *Hub
	broker *pubsub.Memory
	ln     *pipeListener
	srv    *http.Server
	client *http.Client
	served sync.WaitGroup
}

// newTestNode starts serving a new hub; it does not call Run. Everything it
// starts is stopped by t.Cleanup.
func newTestNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "test"
	}
	broker := pubsub.NewMemory(pubsub.MemoryConfig{HistorySize: cfg.HistorySize})
	h, err := New(cfg, broker)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return newTestNodeFor(t, h, broker)
}

// newTestNodeFor serves h, whose broker is (or wraps) broker.
func newTestNodeFor(t *testing.T, h *Hub, broker *pubsub.Memory) *testNode {
	t.Helper()
	n := &testNode{t: t, hub: h, broker: broker, ln: newPipeListener()}
	n.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		h.Serve(conn, ConnInfo{IP: "192.0.2.1", Token: r.URL.Query().Get("token")})
	})}
	n.client = &http.Client{Transport: &http.Transport{DialContext: n.ln.dial, DisableKeepAlives: true}}
	n.served.Go(func() { n.srv.Serve(n.ln) })
	t.Cleanup(func() {
		n.srv.Close()
		n.served.Wait()
	})
	return n
}

// run calls Run until the returned stop is called; stop waits for Run to return.
func (n *testNode) run() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := n.hub.Run(ctx); err != nil {
			n.t.Errorf("Run: %v", err)
		}
	})
	return func() { cancel(); wg.Wait() }
}

// testClient is a WebSocket client of a testNode that collects what it reads.
type testClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func (n *testNode) dial() *testClient {
	n.t.Helper()
	conn, _, err := websocket.Dial(context.Background(), "ws://pipe/ws", &websocket.DialOptions{HTTPClient: n.client})
	if err != nil {
		n.t.Fatalf("dial: %v", err)
	}
	conn.SetReadLimit(-1)
	c := &testClient{t: n.t, conn: conn}
	n.t.Cleanup(func() { conn.CloseNow() })
	return c
}

func (c *testClient) sendRaw(frame string) {
	c.t.Helper()
	if err := c.conn.Write(context.Background(), websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatalf("write %q: %v", frame, err)
	}
}

// join subscribes to room and waits for the ack.
func (c *testClient) join(room string) {
	c.t.Helper()
	c.sendRaw(`{"type":"subscribe","room":"` + room + `","id":1}`)
	c.expect(map[string]any{"type": "ack", "id": 1})
}

// read reads one frame and splits it into objects.
func (c *testClient) read() ([]map[string]any, error) {
	// No timeout: inside a synctest bubble a read that can never finish is a
	// deadlock the bubble reports, and a timeout would only race fake time.
	_, p, err := c.conn.Read(context.Background())
	if err != nil {
		return nil, err
	}
	var objs []map[string]any
	for line := range bytes.SplitSeq(p, []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			c.t.Fatalf("server sent a line that is not JSON: %q", line)
		}
		objs = append(objs, m)
	}
	return objs, nil
}

// next returns the next object the server sent, reading frames as needed.
func (c *testClient) next(pending *[]map[string]any) map[string]any {
	c.t.Helper()
	for len(*pending) == 0 {
		objs, err := c.read()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		*pending = objs
	}
	m := (*pending)[0]
	*pending = (*pending)[1:]
	return m
}

// expect reads the next object and checks its fields.
func (c *testClient) expect(want map[string]any) {
	c.t.Helper()
	var pending []map[string]any
	got := c.next(&pending)
	if len(pending) > 0 {
		c.t.Fatalf("got %d more objects in the frame than expected", len(pending))
	}
	checkObject(c.t, got, want)
}

func checkObject(t *testing.T, got, want map[string]any) {
	t.Helper()
	for k, v := range want {
		gv, _ := json.Marshal(got[k])
		wv, _ := json.Marshal(v)
		if string(gv) != string(wv) {
			t.Fatalf("field %q: got %s, want %s (object %v)", k, gv, wv, got)
		}
	}
}

// expectClose reads until the connection closes and checks the close code.
func (c *testClient) expectClose(code websocket.StatusCode) websocket.CloseError {
	c.t.Helper()
	for {
		_, err := c.read()
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("got error %v, want close code %d", err, code)
		}
		if ce.Code != code {
			c.t.Fatalf("got close code %d (%q), want %d", ce.Code, ce.Reason, code)
		}
		return ce
	}
}
