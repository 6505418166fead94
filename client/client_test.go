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
	"regexp"
	"strings"
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

// startNode runs a node on addr (a free port when empty) with env, and
// returns once it is ready.
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
	// Ready, not only listening: the node listens before its hub runs, and
	// refuses upgrades (503) until it does.
	waitReady(t, n)
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
	return tokenFor(t, "u1", ttl)
}

// tokenFor is a token of user sub that may subscribe and publish anywhere.
func tokenFor(t *testing.T, sub string, ttl time.Duration) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": sub, "exp": time.Now().Add(ttl).Unix(), "subscribe": []string{"*"}, "publish": []string{"*"},
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

// userOpts are client options that connect as user sub (a token that lasts
// the test), with a short backoff.
func userOpts(t *testing.T, sub string) *client.Options {
	t.Helper()
	tok := tokenFor(t, sub, time.Hour)
	return &client.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Token: func(context.Context) (string, error) { return tok, nil }}
}

// presenceLog collects what a presence handler receives.
type presenceLog struct {
	mu  sync.Mutex
	evs []client.PresenceEvent
}

func (l *presenceLog) handle(ev client.PresenceEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

func (l *presenceLog) events() []client.PresenceEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]client.PresenceEvent(nil), l.evs...)
}

// waitFor waits for an event that match accepts, and returns the first one.
func (l *presenceLog) waitFor(t *testing.T, what string, match func(client.PresenceEvent) bool) client.PresenceEvent {
	t.Helper()
	var found client.PresenceEvent
	if !hubtest.Poll(20*time.Second, func() bool {
		for _, ev := range l.events() {
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	}) {
		t.Fatalf("waited 20s for %s; got events %+v", what, l.events())
	}
	return found
}

// members replays the events as a set keyed by client id (join adds, leave
// deletes, a snapshot replaces it), as an application would keep it.
func (l *presenceLog) members() map[string]client.Member {
	set := make(map[string]client.Member)
	for _, ev := range l.events() {
		switch ev.Type {
		case "join":
			set[ev.Client] = client.Member{Client: ev.Client, User: ev.User, Node: ev.Node}
		case "leave":
			delete(set, ev.Client)
		case "presence":
			clear(set)
			for _, m := range ev.Members {
				set[m.Client] = m
			}
		}
	}
	return set
}

// presenceOf waits until Presence of room answers what accept accepts, and
// returns that answer.
func presenceOf(t *testing.T, c *client.Client, room, what string, accept func(client.Presence) bool) client.Presence {
	t.Helper()
	var p client.Presence
	var err error
	if !hubtest.Poll(20*time.Second, func() bool {
		p, err = c.Presence(context.Background(), room)
		return err == nil && accept(p)
	}) {
		t.Fatalf("waited 20s for the presence of %s to show %s; last got %+v, %v", room, what, p, err)
	}
	return p
}

func users(ms []client.Member) map[string]int {
	u := make(map[string]int)
	for _, m := range ms {
		u[m.User]++
	}
	return u
}

// Presence lists a room's members, with their user and node, for any client
// allowed in the room (subscribed or not); the count is the total even when
// the list stops at HUB_PRESENCE_LIMIT.
func TestPresenceListsMembers(t *testing.T) {
	n := startNode(t, "", "HUB_JWT_SECRET="+secret, "HUB_NODE_ID=n1", "HUB_PRESENCE_LIMIT=2")
	ctx := context.Background()
	alice := dial(t, n.url(), userOpts(t, "alice"))
	bob := dial(t, n.url(), userOpts(t, "bob"))
	carol := dial(t, n.url(), userOpts(t, "carol"))
	if _, err := alice.Subscribe(ctx, "lobby", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Subscribe(ctx, "lobby", nil, client.WithPresence(func(client.PresenceEvent) {})); err != nil {
		t.Fatal(err)
	}
	p := presenceOf(t, carol, "lobby", "2 members", func(p client.Presence) bool { return p.Count == 2 })
	if p.Room != "lobby" || len(p.Members) != 2 {
		t.Fatalf("got %+v, want room lobby with 2 members listed", p)
	}
	if u := users(p.Members); u["alice"] != 1 || u["bob"] != 1 {
		t.Errorf("members %+v: got users %v, want alice and bob", p.Members, u)
	}
	for _, m := range p.Members {
		if m.Client == "" || m.Node != "n1" {
			t.Errorf("member %+v: want a client id and node n1", m)
		}
	}
	if p.Members[0].Client == p.Members[1].Client {
		t.Errorf("members %+v: two connections with one client id", p.Members)
	}

	// A third member: counted, but the list stops at the limit (2).
	if _, err := carol.Subscribe(ctx, "lobby", nil); err != nil {
		t.Fatal(err)
	}
	p = presenceOf(t, alice, "lobby", "3 members", func(p client.Presence) bool { return p.Count == 3 })
	if len(p.Members) != 2 {
		t.Errorf("got %d members listed, want HUB_PRESENCE_LIMIT (2) of the 3", len(p.Members))
	}

	if p, err := alice.Presence(ctx, "nobody-here"); err != nil || p.Count != 0 || len(p.Members) != 0 {
		t.Errorf("presence of an empty room: got %+v, %v; want count 0, no members", p, err)
	}
	var e *client.Error
	if _, err := alice.Presence(ctx, "bad room"); !errors.As(err, &e) || e.Code != "bad_room" {
		t.Errorf("presence of a bad room: got %v, want error bad_room", err)
	}
}

// tap records the bytes a client's connections read from the node: frames
// from a node are not masked and no compression is negotiated, so every
// object the node sent is there as it sent it.
type tap struct {
	tr  *http.Transport
	mu  sync.Mutex
	buf bytes.Buffer
}

func newTap(t *testing.T) *tap {
	tp := &tap{}
	var d net.Dialer
	tp.tr = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return tapConn{c, tp}, nil
	}}
	t.Cleanup(tp.tr.CloseIdleConnections)
	return tp
}

func (tp *tap) httpClient() *http.Client { return &http.Client{Transport: tp.tr} }

var presenceTypeRe = regexp.MustCompile(`"type"\s*:\s*"(join|leave)"`)

// presenceEvents counts the join and leave objects the node sent.
func (tp *tap) presenceEvents() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return len(presenceTypeRe.FindAll(tp.buf.Bytes(), -1))
}

type tapConn struct {
	net.Conn
	tp *tap
}

func (c tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.tp.mu.Lock()
	c.tp.buf.Write(p[:n])
	c.tp.mu.Unlock()
	return n, err
}

// A subscription made WithPresence receives the room's joins and leaves
// (its own join too), and they add up to what Presence lists; a plain
// subscription's node sends it none.
func TestPresenceEvents(t *testing.T) {
	n := startNode(t, "", "HUB_JWT_SECRET="+secret, "HUB_NODE_ID=n1")
	ctx := context.Background()
	watchTap, plainTap := newTap(t), newTap(t)
	wo, po := userOpts(t, "alice"), userOpts(t, "bob")
	wo.HTTPClient, po.HTTPClient = watchTap.httpClient(), plainTap.httpClient()
	watcher := dial(t, n.url(), wo)
	plain := dial(t, n.url(), po)
	var log presenceLog
	if _, err := watcher.Subscribe(ctx, "room", nil, client.WithPresence(log.handle)); err != nil {
		t.Fatal(err)
	}
	own := log.waitFor(t, "the watcher's own join", func(ev client.PresenceEvent) bool {
		return ev.Type == "join" && ev.User == "alice"
	})
	in := newInbox()
	if _, err := plain.Subscribe(ctx, "room", in.handle); err != nil {
		t.Fatal(err)
	}
	log.waitFor(t, "bob's join", func(ev client.PresenceEvent) bool { return ev.Type == "join" && ev.User == "bob" })

	carol := dial(t, n.url(), userOpts(t, "carol"))
	sub, err := carol.Subscribe(ctx, "room", nil)
	if err != nil {
		t.Fatal(err)
	}
	joined := log.waitFor(t, "carol's join", func(ev client.PresenceEvent) bool { return ev.Type == "join" && ev.User == "carol" })
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	left := log.waitFor(t, "carol's leave", func(ev client.PresenceEvent) bool { return ev.Type == "leave" && ev.User == "carol" })
	if left.Client != joined.Client {
		t.Errorf("carol left as client %q, joined as %q: want one id", left.Client, joined.Client)
	}
	for _, ev := range log.events() {
		if ev.Room != "room" || ev.Node != "n1" || ev.Client == "" {
			t.Errorf("event %+v: want room room, node n1 and a client id", ev)
		}
	}

	// The events add up to what Presence lists: alice and bob.
	set := log.members()
	p := presenceOf(t, carol, "room", "2 members", func(p client.Presence) bool { return p.Count == 2 })
	if len(set) != 2 || set[own.Client].User != "alice" {
		t.Errorf("the events add up to %v, want alice (%s) and bob", set, own.Client)
	}
	for _, m := range p.Members {
		if set[m.Client] != m {
			t.Errorf("presence lists %+v, the events say %+v", m, set[m.Client])
		}
	}

	// A message published after carol left reaches the plain member after
	// anything the node queued for it before: by then it has sent it no
	// join or leave at all.
	if _, err := watcher.Publish(ctx, "room", "after", nil); err != nil {
		t.Fatal(err)
	}
	in.wait(t, 1)
	if got := plainTap.presenceEvents(); got != 0 {
		t.Errorf("the node sent %d join/leave objects to a plain subscriber, want 0", got)
	}
	if got, want := watchTap.presenceEvents(), len(log.events()); got != want {
		t.Errorf("the node sent %d join/leave objects to the watcher, its handler got %d", got, want)
	}
}

// After a drain the client resubscribes on another node with presence on:
// events keep coming, from both nodes, and its old entry is gone.
func TestPresenceAfterDrain(t *testing.T) {
	redisAddr := hubtest.RedisServer(t)
	env := []string{"HUB_REDIS_URL=redis://" + redisAddr, "HUB_REDIS_PREFIX=" + fmt.Sprint(time.Now().UnixNano()) + ":",
		"HUB_RECONNECT_WINDOW=500ms", "HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s"}
	a := startNode(t, "", append(env, "HUB_NODE_ID=a")...)
	b := startNode(t, "", append(env, "HUB_NODE_ID=b")...)
	waitReady(t, a)
	waitReady(t, b)
	ctx := context.Background()
	var log presenceLog
	reconnected := make(chan struct{}, 4)
	watcher := dial(t, a.url(), &client.Options{URLs: []string{b.url()},
		OnState: func(s client.State, code int, reason string) {
			if s == client.Connected {
				select {
				case reconnected <- struct{}{}:
				default:
				}
			}
		}})
	<-reconnected // the first connect
	if _, err := watcher.Subscribe(ctx, "moving", nil, client.WithPresence(log.handle)); err != nil {
		t.Fatal(err)
	}
	first := log.waitFor(t, "the watcher's join on a", func(ev client.PresenceEvent) bool {
		return ev.Type == "join" && ev.Node == "a"
	})

	// Across nodes: a member on b, seen from a.
	other := dial(t, b.url(), nil)
	if _, err := other.Subscribe(ctx, "moving", nil); err != nil {
		t.Fatal(err)
	}
	fromB := log.waitFor(t, "a join from b", func(ev client.PresenceEvent) bool { return ev.Type == "join" && ev.Node == "b" })

	a.stop(syscall.SIGTERM) // drain: 1012; the watcher reconnects to b
	select {
	case <-reconnected:
	case <-time.After(20 * time.Second):
		t.Fatal("the client did not reconnect after the drain")
	}
	again := log.waitFor(t, "the watcher's join on b after the drain", func(ev client.PresenceEvent) bool {
		return ev.Type == "join" && ev.Node == "b" && ev.Client != fromB.Client
	})
	if again.Client == first.Client {
		t.Errorf("the reconnected watcher joined with its old client id %q, want a new one", first.Client)
	}

	// Events keep flowing on the new connection.
	late := dial(t, b.url(), nil)
	sub, err := late.Subscribe(ctx, "moving", nil)
	if err != nil {
		t.Fatal(err)
	}
	joined := log.waitFor(t, "a join after the resubscribe", func(ev client.PresenceEvent) bool {
		return ev.Type == "join" && ev.Client != again.Client && ev.Client != fromB.Client && ev.Client != first.Client
	})
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	log.waitFor(t, "its leave", func(ev client.PresenceEvent) bool { return ev.Type == "leave" && ev.Client == joined.Client })

	// The drained node's entry is gone: the watcher (now on b) and other.
	p := presenceOf(t, watcher, "moving", "the two members on b", func(p client.Presence) bool { return p.Count == 2 })
	for _, m := range p.Members {
		if m.Node != "b" || (m.Client != again.Client && m.Client != fromB.Client) {
			t.Errorf("after the drain presence lists %+v, want the watcher (%s) and the other member (%s) on b",
				m, again.Client, fromB.Client)
		}
	}
}

// An operator's disconnect (POST /v1/disconnect) with a code of 4100 to 4999
// ends the client for good, as 1008 (the default code) does: it is not
// reconnected, and the application is told the code and the reason. Other
// users stay connected.
func TestNoReconnectAfterOperatorDisconnect(t *testing.T) {
	n := startNode(t, "", "HUB_JWT_SECRET="+secret, "HUB_API_KEY=operator-key")
	ctx := context.Background()
	bystander := dial(t, n.url(), userOpts(t, "stays"))
	if _, err := bystander.Subscribe(ctx, "room", nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		user   string
		body   string
		code   int
		reason string
	}{
		{"banned", `{"user":"banned","code":4100,"reason":"banned"}`, 4100, "banned"},
		{"last", `{"user":"last","code":4999,"reason":"goodbye"}`, 4999, "goodbye"},
		{"policy", `{"user":"policy","reason":"kicked"}`, 1008, "kicked"},
	} {
		t.Run(tt.user, func(t *testing.T) {
			var mu sync.Mutex
			var states []string
			opts := userOpts(t, tt.user)
			opts.OnState = func(s client.State, code int, reason string) {
				mu.Lock()
				defer mu.Unlock()
				states = append(states, fmt.Sprintf("%v/%d/%s", s, code, reason))
			}
			c := dial(t, n.url(), opts)
			if _, err := c.Subscribe(ctx, "room", nil, client.WithPresence(func(client.PresenceEvent) {})); err != nil {
				t.Fatal(err)
			}
			if status, body := post(t, "http://"+n.addr+"/v1/disconnect", "operator-key", tt.body); status != http.StatusAccepted {
				t.Fatalf("POST /v1/disconnect %s: got %d %s, want 202", tt.body, status, body)
			}
			select {
			case <-c.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("the client did not stop after the operator disconnected its user")
			}
			var ce *client.CloseError
			if err := c.Err(); !errors.As(err, &ce) || ce.Code != tt.code || ce.Reason != tt.reason {
				t.Fatalf("Err: got %v, want a close %d %q", err, tt.code, tt.reason)
			}
			if _, err := c.Publish(ctx, "room", 1, nil); !errors.As(err, &ce) {
				t.Errorf("publish after the disconnect: got %v, want the close error", err)
			}
			if _, err := c.Presence(ctx, "room"); !errors.As(err, &ce) {
				t.Errorf("presence after the disconnect: got %v, want the close error", err)
			}
			// Done is closed: the run loop has returned, and nothing will
			// connect again. The states say it never tried (a client starts
			// Connecting, so its first connect reports Connected only).
			mu.Lock()
			got := fmt.Sprint(states)
			mu.Unlock()
			if want := fmt.Sprintf("[connected/-1/ closed/%d/%s]", tt.code, tt.reason); got != want {
				t.Errorf("states: got %s, want %s", got, want)
			}
			if c.State() != client.Closed {
				t.Errorf("state %v, want closed", c.State())
			}
			p := presenceOf(t, bystander, "room", "only the bystander", func(p client.Presence) bool { return p.Count == 1 })
			if len(p.Members) != 1 || p.Members[0].User != "stays" {
				t.Errorf("presence after the disconnect: got %+v, want the bystander only", p.Members)
			}
		})
	}
	if bystander.State() != client.Connected {
		t.Errorf("the bystander's state is %v, want connected", bystander.State())
	}
}

// post sends body with the bearer key and returns the status and body.
func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
