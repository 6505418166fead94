package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/redis/go-redis/v9"
)

// closeResult is how a drained connection ended.
type closeResult struct {
	code websocket.StatusCode
	hint int64 // reconnect_after_ms, -1 when absent
}

// idleClients opens n connections to nd, each subscribed to one of rooms.
func idleClients(t *testing.T, nd *node, n, rooms int) []*hubtest.Client {
	t.Helper()
	clients := make([]*hubtest.Client, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, _, err := hubtest.TryDial(t, nd.wsURL(), nil)
			if err == nil {
				err = c.TrySend(`{"type":"subscribe","room":"room-%d","id":1}`, i%rooms)
			}
			if err == nil { // one subscribe in flight per dialer, as a client would
				var m map[string]any
				if m, err = c.TryNext(30 * time.Second); err == nil && m["type"] != "ack" {
					err = fmt.Errorf("subscribe: got %v, want its ack", m)
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, &err)
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d clients failed to connect and subscribe; the first: %v", f, n, *firstErr.Load())
	}
	return clients
}

// closeOf waits for c's connection to end and returns how it ended.
func closeOf(c *hubtest.Client, timeout time.Duration) closeResult {
	code, reason := c.CloseStatus(timeout)
	res := closeResult{code: code, hint: -1}
	var h struct {
		ReconnectAfterMS *int64 `json:"reconnect_after_ms"`
	}
	if json.Unmarshal([]byte(reason), &h) == nil && h.ReconnectAfterMS != nil {
		res.hint = *h.ReconnectAfterMS
	}
	return res
}

// readyWatcher polls /readyz from before the stop until the node is gone and
// records every status it saw, in order.
func watchReady(n *node) (stop func() []int) {
	var seen []int
	var mu sync.Mutex
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		client := &http.Client{Timeout: time.Second}
		for {
			select {
			case <-done:
				return
			default:
			}
			resp, err := client.Get(n.url("/readyz"))
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			resp.Body.Close()
			mu.Lock()
			seen = append(seen, resp.StatusCode)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() []int {
		close(done)
		<-finished
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

func TestDrainUnderLoad(t *testing.T) {
	const clients, rooms = 5000, 100
	c := startCluster(t, 2, "HUB_DRAIN_DELAY=1s", "HUB_DRAIN_TIMEOUT=20s", "HUB_RECONNECT_WINDOW=3s")
	a, b := c.nodes[0], c.nodes[1]
	idle := idleClients(t, a, clients, rooms)
	watcher := dialNode(t, b)
	watcher.Subscribe("room-0")
	c.waitNumsub(t, "room-0", 2)
	// Warm B up first: its Redis connections for publishing and reading
	// history are opened on first use, and must not count as a leak.
	if code := b.publishHTTP("room-0", "warm-up"); code != 202 {
		t.Fatalf("publish: got %d", code)
	}
	watcher.NextOfType("message", 10*time.Second)
	http.DefaultClient.CloseIdleConnections()
	// B's descriptors are counted without its connections to Redis: the Redis
	// client's pool keeps a connection it opened when commands overlapped
	// (self-probes slow down while A drains on this loaded machine), which is
	// no leak.
	rc := c.redis.client(t)
	fds := func() float64 { return b.metric("process_open_fds") - redisConns(t, rc, b.id) }
	baseGoroutines, baseFDs := b.metric("go_goroutines"), fds()

	stopWatch := watchReady(a)
	if !hubtest.Poll(30*time.Second, func() bool { return a.metric("hub_connections") == clients }) {
		t.Fatalf("node A holds %v connections, want %d", a.metric("hub_connections"), clients)
	}
	start := time.Now()
	a.signal(syscall.SIGTERM)
	// A connection arriving during the drain is refused with 503.
	a.waitStatus(503, 10*time.Second) // the drain began; its 1s delay has not ended
	if _, resp, err := websocket.Dial(context.Background(), "ws://"+a.addr+"/ws", nil); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Errorf("upgrade during drain: got %v, want HTTP 503", err)
	}
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("drained node exited %d, want 0", code)
	}
	took := time.Since(start)
	seen := stopWatch()
	t.Logf("drain of %d clients: exit after %v", clients, took.Round(time.Millisecond))

	// /readyz: 200 until the signal, then 503 until the listener closed.
	sawDown := false
	for _, s := range seen {
		if s == 503 {
			sawDown = true
		} else if sawDown {
			t.Fatalf("/readyz went back to %d after 503: %v", s, seen)
		}
	}
	if !sawDown {
		t.Fatalf("/readyz never answered 503 during the drain: %v", seen)
	}

	// Every client got 1012 with a hint in the window.
	hist := make([]int, 4)
	for _, cl := range idle {
		r := closeOf(cl, 10*time.Second)
		if r.code != websocket.StatusServiceRestart || r.hint < 0 || r.hint > 3000 {
			t.Fatalf("got close %d with hint %d, want 1012 with a hint in [0, 3000]", r.code, r.hint)
		}
		hist[min(r.hint/1000, 3)]++
	}
	t.Logf("reconnect hints: 0-1s %d, 1-2s %d, 2-3s %d", hist[0], hist[1], hist[2])
	for i := range 3 {
		if hist[i] < clients/6 {
			t.Errorf("hint bucket %d has %d of %d clients: hints are not spread", i, hist[i], clients)
		}
	}

	// Redis holds only B's subscription.
	if got := c.numsub(t, "room-0"); got != 1 {
		t.Errorf("room-0 after A left: got %d subscribers, want 1 (B)", got)
	}
	// Clients move to B, rejoin, and get what is published after.
	const movers = 200
	var moved []*hubtest.Client
	for i := range movers {
		cl := dialNode(t, b)
		cl.Subscribe(fmt.Sprintf("room-%d", i%rooms))
		moved = append(moved, cl)
	}
	if code := b.publishHTTP("room-1", "after"); code != 202 {
		t.Fatalf("publish: got %d", code)
	}
	for i, cl := range moved {
		if i%rooms != 1 {
			continue
		}
		if m := cl.NextOfType("message", 10*time.Second); m["data"] != "after" {
			t.Fatalf("moved client: got %v", m)
		}
	}
	for _, cl := range moved {
		cl.Conn().Close(websocket.StatusNormalClosure, "")
	}
	http.DefaultClient.CloseIdleConnections() // the publish above used keep-alive
	// B's goroutines and descriptors come back to where they were.
	var g, f float64
	if !hubtest.Poll(20*time.Second, func() bool {
		g, f = b.metric("go_goroutines"), fds()
		return g <= baseGoroutines && f <= baseFDs
	}) {
		t.Fatalf("node B: goroutines %v (before %v), open fds but Redis's %v (before %v)", g, baseGoroutines, f, baseFDs)
	}
}

// redisConns is how many connections node id holds to Redis: go-redis names
// each of them hubcluster:<id>.
func redisConns(t *testing.T, rc *redis.Client, id string) float64 {
	t.Helper()
	list, err := rc.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	// A node names its connections hubcluster:<id>-<origin suffix>[:sub].
	return float64(strings.Count(list, " name=hubcluster:"+id+"-"))
}

func TestDrainWithRedisStopped(t *testing.T) {
	c := startCluster(t, 1, "HUB_DRAIN_DELAY=0s", "HUB_DRAIN_TIMEOUT=10s")
	n := c.nodes[0]
	idle := idleClients(t, n, 50, 5)
	c.redis.stop(t)
	c.proxy.cut()
	n.waitStatus(503, 10*time.Second)
	n.signal(syscall.SIGTERM)
	if code := n.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	for _, cl := range idle {
		if r := closeOf(cl, 10*time.Second); r.code != websocket.StatusServiceRestart {
			t.Fatalf("got close %d, want 1012", r.code)
		}
	}
}

// A second signal ends the drain at once: steps still waiting are forced and
// the exit code says the drain did not finish.
func TestSecondSignalForcesExit(t *testing.T) {
	n := startNode(t, "forced", "HUB_DRAIN_DELAY=60s", "HUB_DRAIN_TIMEOUT=90s")
	n.waitReady(30 * time.Second)
	idle := idleClients(t, n, 20, 2)
	n.signal(syscall.SIGTERM)
	n.waitStatus(503, 10*time.Second) // draining, inside the 60s delay
	n.signal(syscall.SIGTERM)
	if code := n.wait(20 * time.Second); code == 0 {
		t.Fatal("forced exit code 0, want non-zero")
	}
	for _, cl := range idle {
		r := closeOf(cl, 10*time.Second)
		if r.code != websocket.StatusServiceRestart && r.code != -1 {
			t.Fatalf("got close %d, want 1012 or a cut", r.code)
		}
	}
	if !strings.Contains(n.logs.String(), "forcing") {
		t.Errorf("the log does not say the drain was forced")
	}
}
