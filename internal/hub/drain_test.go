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
