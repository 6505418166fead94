package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// closeResult is how a drained connection ended.
type closeResult struct {
	code websocket.StatusCode
	hint int64 // reconnect_after_ms, -1 when absent
}

// idleClients opens n connections to nd, each subscribed to one of rooms, and
// reads each until it closes.
func idleClients(t *testing.T, nd *node, n, rooms int) (results chan closeResult, conns []*websocket.Conn) {
	t.Helper()
	results = make(chan closeResult, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var mu sync.Mutex
	errs := 0
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, "ws://"+nd.addr+"/ws", nil)
			if err != nil {
				mu.Lock()
				errs++
				mu.Unlock()
				return
			}
			c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"subscribe","room":"room-%d","id":1}`, i%rooms))
			if _, p, err := c.Read(ctx); err != nil || !strings.Contains(string(p), `"ack"`) {
				mu.Lock()
				errs++
				mu.Unlock()
				c.CloseNow()
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				for {
					_, _, err := c.Read(context.Background())
					if err == nil {
						continue
					}
					res := closeResult{code: websocket.CloseStatus(err), hint: -1}
					var ce websocket.CloseError
					if errors.As(err, &ce) {
						var h struct {
							ReconnectAfterMS *int64 `json:"reconnect_after_ms"`
						}
						if json.Unmarshal([]byte(ce.Reason), &h) == nil && h.ReconnectAfterMS != nil {
							res.hint = *h.ReconnectAfterMS
						}
					}
					results <- res
					return
				}
			}()
		})
	}
	wg.Wait()
	if errs > 0 {
		t.Fatalf("%d of %d clients failed to connect and subscribe", errs, n)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.CloseNow()
		}
	})
	return results, conns
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
	results, _ := idleClients(t, a, clients, rooms)
	watcher := dialNode(t, b)
	watcher.subscribe("room-0")
	c.waitNumsub(t, "room-0", 2)
	// Warm B up first: its Redis connections for publishing and reading
	// history are opened on first use, and must not count as a leak.
	if code := b.publishHTTP("room-0", "warm-up"); code != 202 {
		t.Fatalf("publish: got %d", code)
	}
	watcher.nextOfType("message", 10*time.Second)
	http.DefaultClient.CloseIdleConnections()
	baseGoroutines, baseFDs := b.metric("go_goroutines"), b.metric("process_open_fds")

	stopWatch := watchReady(a)
	for deadline := time.Now().Add(30 * time.Second); a.metric("hub_connections") != clients; {
		if time.Now().After(deadline) {
			t.Fatalf("node A holds %v connections, want %d", a.metric("hub_connections"), clients)
		}
		time.Sleep(10 * time.Millisecond)
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
	for range clients {
		r := <-results
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
	var moved []*client
	for i := range movers {
		cl := dialNode(t, b)
		cl.subscribe(fmt.Sprintf("room-%d", i%rooms))
		moved = append(moved, cl)
	}
	if code := b.publishHTTP("room-1", "after"); code != 202 {
		t.Fatalf("publish: got %d", code)
	}
	for i, cl := range moved {
		if i%rooms != 1 {
			continue
		}
		if m := cl.nextOfType("message", 10*time.Second); m["data"] != "after" {
			t.Fatalf("moved client: got %v", m)
		}
	}
	for _, cl := range moved {
		cl.conn.Close(websocket.StatusNormalClosure, "")
	}
	http.DefaultClient.CloseIdleConnections() // the publish above used keep-alive
	// B's goroutines and descriptors come back to where they were. Its Redis
	// pool may keep a connection or two more than before (it grows with
	// concurrent commands and keeps idle ones): a leak would be one per
	// client, hundreds.
	deadline := time.Now().Add(20 * time.Second)
	for {
		g, f := b.metric("go_goroutines"), b.metric("process_open_fds")
		if g <= baseGoroutines+2 && f <= baseFDs+2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node B: goroutines %v (before %v), open fds %v (before %v)", g, baseGoroutines, f, baseFDs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDrainWithRedisStopped(t *testing.T) {
	c := startCluster(t, 1, "HUB_DRAIN_DELAY=0s", "HUB_DRAIN_TIMEOUT=10s")
	n := c.nodes[0]
	results, _ := idleClients(t, n, 50, 5)
	c.redis.stop(t)
	c.proxy.cut()
	n.waitStatus(503, 10*time.Second)
	n.signal(syscall.SIGTERM)
	if code := n.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	for range 50 {
		if r := <-results; r.code != websocket.StatusServiceRestart {
			t.Fatalf("got close %d, want 1012", r.code)
		}
	}
}

// A second signal ends the drain at once: steps still waiting are forced and
// the exit code says the drain did not finish.
func TestSecondSignalForcesExit(t *testing.T) {
	n := startNode(t, "forced", "HUB_DRAIN_DELAY=60s", "HUB_DRAIN_TIMEOUT=90s")
	n.waitReady(30 * time.Second)
	results, _ := idleClients(t, n, 20, 2)
	n.signal(syscall.SIGTERM)
	n.waitStatus(503, 10*time.Second) // draining, inside the 60s delay
	n.signal(syscall.SIGTERM)
	if code := n.wait(20 * time.Second); code == 0 {
		t.Fatal("forced exit code 0, want non-zero")
	}
	for range 20 {
		r := <-results
		if r.code != websocket.StatusServiceRestart && r.code != -1 {
			t.Fatalf("got close %d, want 1012 or a cut", r.code)
		}
	}
	if !strings.Contains(n.logs.String(), "forcing") {
		t.Errorf("the log does not say the drain was forced")
	}
}
