package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hubcluster/hubcluster/client"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"go.uber.org/goleak"
)

// The client is tested against real node processes (the built binary), on
// the in-memory broker and as a two-node cluster on a real redis-server.

var nodeBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hubcluster-client")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	nodeBinary = filepath.Join(dir, "node")
	build := exec.Command("go", "build", "-race", "-o", nodeBinary, "github.com/hubcluster/hubcluster/cmd/node")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "client: goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// node is a running node process.
type node struct {
	t    *testing.T
	addr string
	cmd  *exec.Cmd
	logs *bytes.Buffer
	mu   sync.Mutex
	done chan struct{}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startNode runs a node on addr (a free port when empty) with env.
func startNode(t *testing.T, addr string, env ...string) *node {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	n := &node{t: t, addr: addr, logs: &bytes.Buffer{}, done: make(chan struct{})}
	n.cmd = exec.Command(nodeBinary)
	n.cmd.Env = append([]string{"HUB_ADDR=" + addr, "HUB_LOG_LEVEL=debug", "HUB_DRAIN_DELAY=0s", "PATH=" + os.Getenv("PATH")}, env...)
	n.cmd.Stdout, n.cmd.Stderr = lockedWriter{n}, lockedWriter{n}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
		}
		if t.Failed() {
			n.mu.Lock()
			t.Logf("node %s log:\n%s", addr, n.logs.String())
			n.mu.Unlock()
		}
	})
	hubtest.Eventually(t, 20*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "node %s to listen", addr)
	return n
}

type lockedWriter struct{ n *node }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.n.mu.Lock()
	defer w.n.mu.Unlock()
	return w.n.logs.Write(p)
}

func (n *node) url() string { return "ws://" + n.addr + "/ws" }

func (n *node) stop(sig os.Signal) {
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.t.Fatal("node did not stop")
	}
}

// inbox collects what a subscription's handler receives.
type inbox struct {
	mu   sync.Mutex
	msgs []client.Message
	got  chan struct{}
}

func newInbox() *inbox { return &inbox{got: make(chan struct{}, 1)} }

func (b *inbox) handle(m client.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
	select {
	case b.got <- struct{}{}:
	default:
	}
}

func (b *inbox) wait(t *testing.T, n int) []client.Message {
	t.Helper()
	hubtest.Eventually(t, 20*time.Second, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.msgs) >= n
	}, "%d messages", n)
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]client.Message(nil), b.msgs...)
}

func dial(t *testing.T, url string, opts *client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSubscribePublishAckAndErrors(t *testing.T) {
	n := startNode(t, "")
	c := dial(t, n.url(), nil)
	ctx := context.Background()
	in := newInbox()
	if _, err := c.Subscribe(ctx, "room:1", in.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "room:1", in.handle); !errors.Is(err, client.ErrSubscribed) {
		t.Errorf("second Subscribe: got %v, want ErrSubscribed", err)
	}
	rc, err := c.Publish(ctx, "room:1", map[string]string{"text": "hi"}, nil)
	if err != nil || rc.Offset != 1 || rc.Key == "" {
		t.Fatalf("Publish: got %+v, %v; want offset 1 and a key", rc, err)
	}
	msgs := in.wait(t, 1)
	if string(msgs[0].Data) != `{"text":"hi"}` || msgs[0].Offset != 1 || msgs[0].Room != "room:1" {
		t.Errorf("got %+v", msgs[0])
	}
	var e *client.Error
	if _, err := c.Publish(ctx, "bad room", 1, nil); !errors.As(err, &e) || e.Code != "bad_room" {
		t.Errorf("publish to a bad room: got %v, want error bad_room", err)
	}
	if _, err := c.Subscribe(ctx, "", in.handle); !errors.As(err, &e) || e.Code != "bad_room" {
		t.Errorf("subscribe to an empty room: got %v, want error bad_room", err)
	}
	// The same idempotency key twice: delivered once, the same offset.
	again, err := c.Publish(ctx, "room:1", "once", &client.PublishOptions{IdempotencyKey: "k-1"})
	dup, err2 := c.Publish(ctx, "room:1", "once", &client.PublishOptions{IdempotencyKey: "k-1"})
	if err != nil || err2 != nil || again.Offset != dup.Offset {
		t.Errorf("same key twice: got %+v %v and %+v %v, want one offset", again, err, dup, err2)
	}
	if _, err := c.Publish(ctx, "room:1", "last", nil); err != nil {
		t.Fatal(err)
	}
	msgs = in.wait(t, 3)
	if len(msgs) != 3 || string(msgs[2].Data) != `"last"` {
		t.Errorf("got %d messages, want 3 (the repeated key delivered once)", len(msgs))
	}
}

// The node batches many messages into one frame; the client splits them and
// hands each to the handler, in order.
func TestFramesAreSplit(t *testing.T) {
	n := startNode(t, "", "HUB_CLIENT_RATE=0", "HUB_WRITE_COALESCE=20ms")
	sub := dial(t, n.url(), nil)
	pub := dial(t, n.url(), nil)
	ctx := context.Background()
	in := newInbox()
	if _, err := sub.Subscribe(ctx, "r", in.handle); err != nil {
		t.Fatal(err)
	}
	const msgs = 300
	var wg sync.WaitGroup
	for i := range msgs {
		wg.Go(func() {
			if _, err := pub.Publish(ctx, "r", i, nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := in.wait(t, msgs)
	for i, m := range got {
		if m.Offset != uint64(i+1) {
			t.Fatalf("message %d: offset %d, want %d", i, m.Offset, i+1)
		}
	}
}

// After a drain (1012) the client waits the hinted delay, reconnects (here
// to the other node of a Redis cluster) and recovers what was published
// meanwhile: nothing missed, nothing twice.
func TestReconnectAtHintAndRecover(t *testing.T) {
	redisAddr := hubtest.RedisServer(t)
	env := []string{"HUB_REDIS_URL=redis://" + redisAddr, "HUB_REDIS_PREFIX=" + fmt.Sprint(time.Now().UnixNano()) + ":",
		"HUB_RECONNECT_WINDOW=1500ms", "HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s"}
	a := startNode(t, "", append(env, "HUB_NODE_ID=a")...)
	b := startNode(t, "", append(env, "HUB_NODE_ID=b")...)
	waitReady(t, a)
	waitReady(t, b)
	var mu sync.Mutex
	var states []string
	var downAt, retryAt, upAt time.Time
	var hint time.Duration
	recovered := make(chan bool, 4)
	c := dial(t, a.url(), &client.Options{URLs: []string{b.url()},
		OnState: func(s client.State, code int, reason string) {
			mu.Lock()
			defer mu.Unlock()
			states = append(states, fmt.Sprintf("%v/%d", s, code))
			switch s {
			case client.Disconnected:
				if downAt.IsZero() {
					downAt = time.Now()
					var h struct {
						MS int64 `json:"reconnect_after_ms"`
					}
					json.Unmarshal([]byte(reason), &h)
					hint = time.Duration(h.MS) * time.Millisecond
				}
			case client.Connecting:
				if !downAt.IsZero() && retryAt.IsZero() {
					retryAt = time.Now()
				}
			case client.Connected:
				upAt = time.Now()
			}
		},
		OnRecovered: func(room string, n int, ok bool) { recovered <- ok },
	})
	pub := dial(t, b.url(), nil)
	ctx := context.Background()
	in := newInbox()
	if _, err := c.Subscribe(ctx, "moving", in.handle); err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := pub.Publish(ctx, "moving", i, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 20)
	in.wait(t, 20)
	a.stop(syscall.SIGTERM) // drain: 1012 with a hint up to 1.5 s
	publish(20, 60)         // while the client waits out its hint
	select {
	case ok := <-recovered:
		if !ok {
			t.Fatal("recovery after the drain: got recovered false, want true")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the client did not recover after the drain")
	}
	publish(60, 80)
	got := in.wait(t, 80)
	if len(got) != 80 {
		t.Fatalf("got %d messages, want 80 exactly", len(got))
	}
	for i, m := range got {
		var d int
		json.Unmarshal(m.Data, &d)
		if d != i {
			t.Fatalf("message %d: got %d (nothing missed, nothing twice, in order)", i, d)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(states) < 2 || states[1] != "disconnected/1012" {
		t.Errorf("states %v: want a disconnect with 1012 after the first connect", states)
	}
	if waited := retryAt.Sub(downAt); waited < hint-5*time.Millisecond {
		t.Errorf("the client reconnected %v after the close, before the node's hint of %v", waited, hint)
	}
	t.Logf("hint %v; reconnect attempt %v after the close, connected %v after; states %v", hint,
		retryAt.Sub(downAt).Round(time.Millisecond), upAt.Sub(downAt).Round(time.Millisecond), states)
}

// After a lost connection (the node killed) the client retries with
// growing, jittered waits until the node is back; a node that lost its
// history (memory broker restarted) is told as a gap.
func TestBackoffAfterLossAndGapAfterLostHistory(t *testing.T) {
	n := startNode(t, "")
	var mu sync.Mutex
	var attempts []time.Time
	gaps := make(chan string, 4)
	recovered := make(chan bool, 4)
	c := dial(t, n.url(), &client.Options{MinBackoff: 100 * time.Millisecond, MaxBackoff: 800 * time.Millisecond,
		OnState: func(s client.State, code int, reason string) {
			if s == client.Connecting {
				mu.Lock()
				attempts = append(attempts, time.Now())
				mu.Unlock()
			}
		},
		OnGap:       func(room string) { gaps <- room },
		OnRecovered: func(room string, _ int, ok bool) { recovered <- ok },
	})
	ctx := context.Background()
	in := newInbox()
	if _, err := c.Subscribe(ctx, "r", in.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "r", "before", nil); err != nil {
		t.Fatal(err)
	}
	in.wait(t, 1)
	n.stop(syscall.SIGKILL)
	time.Sleep(4 * time.Second)
	mu.Lock()
	tries := len(attempts)
	var waits []time.Duration
	for i := 2; i < len(attempts); i++ {
		waits = append(waits, attempts[i].Sub(attempts[i-1]).Round(10*time.Millisecond))
	}
	mu.Unlock()
	// 100ms, 200ms, 400ms, then 800ms each (jittered down to half): about
	// 6 to 10 attempts in 4s, not hundreds.
	if tries < 4 || tries > 14 {
		t.Errorf("got %d connection attempts in 4s of outage (waits %v), want a bounded backoff", tries, waits)
	}
	for _, w := range waits {
		if w > 900*time.Millisecond {
			t.Errorf("a wait of %v between attempts, want at most MaxBackoff (800ms)", w)
		}
	}
	startNode(t, n.addr) // back, with a new (empty) history
	select {
	case room := <-gaps:
		if room != "r" {
			t.Errorf("gap for %q, want r", room)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no gap after the node lost its history")
	}
	if ok := <-recovered; ok {
		t.Error("recovered true from a node that lost its history, want false")
	}
	if _, err := c.Publish(ctx, "r", "after", nil); err != nil {
		t.Fatal(err)
	}
	if got := in.wait(t, 2); string(got[1].Data) != `"after"` {
		t.Errorf("after the reconnect: got %s, want the new message", got[1].Data)
	}
	t.Logf("%d attempts while the node was down; waits %v", tries, waits)
}

const secret = "0123456789abcdef0123456789abcdef"

func token(t *testing.T, ttl time.Duration) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "u1", "exp": time.Now().Add(ttl).Unix(), "subscribe": []string{"*"}, "publish": []string{"*"},
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The token callback is asked again before the token expires: the
// connection outlives its first token.
func TestTokenRefresh(t *testing.T) {
	n := startNode(t, "", "HUB_JWT_SECRET="+secret)
	var mu sync.Mutex
	calls := 0
	c := dial(t, n.url(), &client.Options{RefreshBefore: 2 * time.Second,
		Token: func(ctx context.Context) (string, error) {
			mu.Lock()
			calls++
			mu.Unlock()
			return token(t, 4*time.Second), nil
		}})
	ctx := context.Background()
	in := newInbox()
	if _, err := c.Subscribe(ctx, "r", in.handle); err != nil {
		t.Fatal(err)
	}
	time.Sleep(7 * time.Second) // past the first token's expiry (4s; the node allows 5s leeway)
	if _, err := c.Publish(ctx, "r", "still here", nil); err != nil {
		t.Fatalf("publish after the first token expired: %v", err)
	}
	in.wait(t, 1)
	mu.Lock()
	defer mu.Unlock()
	if calls < 2 {
		t.Errorf("the token callback was called %d times, want a refresh before expiry", calls)
	}
	if c.State() != client.Connected {
		t.Errorf("state %v, want connected", c.State())
	}
}

// A policy close (1008) is final: the client reports it and does not
// reconnect.
func TestNoReconnectAfter1008(t *testing.T) {
	n := startNode(t, "", "HUB_JWT_SECRET="+secret)
	first := true
	c := dial(t, n.url(), &client.Options{RefreshBefore: 500 * time.Millisecond, MinBackoff: 10 * time.Millisecond,
		Token: func(ctx context.Context) (string, error) {
			if first {
				first = false
				return token(t, 2*time.Second), nil
			}
			return "not-a-token", nil // the refresh is refused; the first token then expires
		}})
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the client did not stop after its token expired")
	}
	var ce *client.CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != 1008 {
		t.Fatalf("Err: got %v, want a close 1008", err)
	}
	if c.State() != client.Closed {
		t.Errorf("state %v, want closed", c.State())
	}
	if _, err := c.Publish(context.Background(), "r", 1, nil); !errors.As(err, &ce) {
		t.Errorf("publish after the final close: got %v, want the close error", err)
	}
}

// A publish made while disconnected waits for the connection and is
// delivered once it is back; past QueueTimeout it fails as not sent.
func TestPublishWhileDisconnected(t *testing.T) {
	n := startNode(t, "")
	c := dial(t, n.url(), &client.Options{QueueTimeout: 8 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx := context.Background()
	n.stop(syscall.SIGKILL)
	hubtest.Eventually(t, 10*time.Second, func() bool { return c.State() != client.Connected }, "the client to notice")
	done := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx, "r", "queued", nil)
		done <- err
	}()
	time.Sleep(time.Second)
	n2 := startNode(t, n.addr)
	if err := <-done; err != nil {
		t.Fatalf("queued publish: %v", err)
	}
	h, err := httpGetBody("http://" + n2.addr + "/v1/history?room=r")
	if err != nil || !bytes.Contains(h, []byte(`"queued"`)) {
		t.Fatalf("history after the queued publish: %s, %v; want it there", h, err)
	}

	short := dial(t, n2.url(), &client.Options{QueueTimeout: time.Second, MinBackoff: 50 * time.Millisecond})
	n2.stop(syscall.SIGKILL)
	hubtest.Eventually(t, 10*time.Second, func() bool { return short.State() != client.Connected }, "the client to notice")
	start := time.Now()
	if _, err := short.Publish(ctx, "r", "never", nil); !errors.Is(err, client.ErrNotConnected) {
		t.Fatalf("publish with no node to reach: got %v, want ErrNotConnected", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the publish waited %v, want about its QueueTimeout (1s)", took)
	}
}

func httpGetBody(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func httpGet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func waitReady(t *testing.T, n *node) {
	t.Helper()
	hubtest.Eventually(t, 20*time.Second, func() bool {
		resp, err := httpGet("http://" + n.addr + "/readyz")
		return err == nil && resp == 200
	}, "node %s to be ready", n.addr)
}
