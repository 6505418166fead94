package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
)

func TestDrainClosesEveryClientWith1012AndAHintInPacedBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{WriteTimeout: 5 * time.Second})
		defer n.run()()
		const clients = 50
		cs := make([]*testClient, clients)
		for i := range cs {
			cs[i] = n.dial()
			cs[i].sendRaw(fmt.Sprintf(`{"type":"subscribe","room":"r%d","id":1}`, i%5))
			cs[i].expect(map[string]any{"type": "ack"})
		}
		hints := make(chan int64, clients)
		for _, c := range cs {
			go func() {
				_, err := c.read()
				var ce websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart {
					t.Errorf("got %v, want close 1012", err)
					hints <- -1
					return
				}
				var hint struct {
					ReconnectAfterMS *int64 `json:"reconnect_after_ms"`
				}
				if err := json.Unmarshal([]byte(ce.Reason), &hint); err != nil || hint.ReconnectAfterMS == nil {
					t.Errorf("close reason %q is not a reconnect hint", ce.Reason)
					hints <- -1
					return
				}
				hints <- *hint.ReconnectAfterMS
			}()
		}
		// Regression: idle past the write timeout since their last write, with
		// keepalive pings in between; a stale socket deadline would fail the
		// close frame.
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := n.hub.Clients(); got != clients {
			t.Fatalf("after a minute idle: got %d clients, want %d (keepalive cut live peers)", got, clients)
		}
		start := time.Now()
		err := n.hub.Drain(context.Background(), DrainOptions{ReconnectWindow: 3 * time.Second, BatchSize: 10, BatchInterval: time.Second})
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
		if took := time.Since(start); took != 4*time.Second {
			t.Errorf("Drain took %v, want 4s (5 batches, 4 pauses)", took)
		}
		if err := n.hub.WaitEmpty(context.Background()); err != nil {
			t.Fatal(err)
		}
		if c, r := n.hub.Clients(), n.hub.Rooms(); c != 0 || r != 0 {
			t.Errorf("after drain: %d clients, %d rooms; want 0, 0", c, r)
		}
		distinct := map[int64]bool{}
		for range clients {
			h := <-hints
			if h < 0 || h > 3000 {
				t.Errorf("hint %dms outside [0, 3000]", h)
			}
			distinct[h] = true
		}
		if len(distinct) < clients/2 {
			t.Errorf("got %d distinct hints for %d clients, want them spread", len(distinct), clients)
		}
		if got := counterValue(t, n.hub.metrics.closes.WithLabelValues("1012")); got != clients {
			t.Errorf("got %v closes with 1012, want %d", got, clients)
		}
	})
}

func TestConnectionDuringDrainIsClosedWith1012(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		defer n.run()()
		if err := n.hub.Drain(context.Background(), DrainOptions{}); err != nil {
			t.Fatal(err)
		}
		ce := n.dial().expectClose(websocket.StatusServiceRestart)
		if !strings.Contains(ce.Reason, "reconnect_after_ms") {
			t.Errorf("got reason %q, want a reconnect hint", ce.Reason)
		}
	})
}

// Peers that never answer the close handshake would hold the drain for 5s
// each; at the deadline they are cut, and the hub empties.
func TestDrainDeadlineCutsPeersThatDoNotAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{PingInterval: -1})
		defer n.run()()
		for range 20 {
			n.dial() // never reads: never answers the close
		}
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		n.hub.Drain(ctx, DrainOptions{})
		if err := n.hub.WaitEmpty(ctx); err == nil {
			t.Fatal("WaitEmpty: got nil, want the deadline's error while peers hold their close")
		}
		n.hub.Cut()
		if err := n.hub.WaitEmpty(context.Background()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 2*time.Second {
			t.Errorf("the hub emptied %v after the drain began, want 2s (the deadline)", took)
		}
	})
}

// Shutdown drains, waits for every client, and stops the hub (Run returns);
// it is idempotent, and it spreads the closes over what the deadline leaves.
func TestShutdownDrainsWaitsAndStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{PingInterval: -1})
		runDone := make(chan struct{})
		go func() { n.hub.Run(context.Background()); close(runDone) }()
		const clients = 40
		closed := make(chan time.Time, clients)
		for range clients {
			c := n.dial()
			go func() {
				_, err := c.read() // reading answers the close handshake
				if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
					closed <- time.Now()
				}
			}()
		}
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		start := time.Now()
		// Batches of 10, at most 50ms apart: 4 batches fit in 150ms, well
		// inside half the deadline.
		if err := n.hub.Shutdown(ctx, DrainOptions{BatchSize: 10}); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		<-runDone
		if got := n.hub.Clients(); got != 0 {
			t.Errorf("after Shutdown: %d clients, want 0", got)
		}
		var last time.Time
		for range clients {
			if at := <-closed; at.After(last) {
				last = at
			}
		}
		if spread := last.Sub(start); spread != 150*time.Millisecond {
			t.Errorf("closes spread over %v, want 150ms (3 intervals of 50ms)", spread)
		}
		// Idempotent: a second call returns the first's result at once.
		if err := n.hub.Shutdown(context.Background(), DrainOptions{}); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
		n.dial().expectClose(websocket.StatusTryAgainLater) // a stopped hub refuses new connections
	})
}

// With little time left the closes are paced faster, and at the deadline the
// rest is cut: Shutdown returns the deadline's error and the hub is empty.
func TestShutdownPacesToTheDeadlineAndCuts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{PingInterval: -1})
		defer n.run()()
		for range 30 {
			n.dial() // never reads: never answers the close
		}
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := n.hub.Shutdown(ctx, DrainOptions{BatchSize: 1, BatchInterval: time.Second})
		if err == nil {
			t.Fatal("Shutdown: got nil, want the deadline's error (peers hold their close)")
		}
		if took := time.Since(start); took != 600*time.Millisecond {
			t.Errorf("Shutdown took %v, want the 600ms deadline", took)
		}
		synctest.Wait()
		if got := n.hub.Clients(); got != 0 {
			t.Errorf("after a forced Shutdown: %d clients, want 0", got)
		}
	})
}
