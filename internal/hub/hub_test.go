package hub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Regression: a connection accepted before Run must not panic. It is served:
// the hub's context exists from New on.
func TestServeBeforeRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		a, b := n.dial(), n.dial()
		a.join("r")
		b.sendRaw(`{"type":"publish","room":"r","data":{"n":1},"id":"p"}`)
		b.expect(map[string]any{"type": "ack", "id": "p"})
		a.expect(map[string]any{"type": "message", "room": "r", "data": map[string]any{"n": 1}})

		stop := n.run()
		b.sendRaw(`{"type":"publish","room":"r","data":2}`)
		a.expect(map[string]any{"type": "message", "room": "r", "data": 2})
		stop()
	})
}

// Regression: stopping the hub with many clients connected (far more than any
// channel buffer) must not block a single teardown, and leaves no goroutine.
func TestStopWithManyClientsConnected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		stop := n.run()
		const clients = 1000
		cs := make([]*testClient, clients)
		for i := range cs {
			cs[i] = n.dial()
			cs[i].sendRaw(fmt.Sprintf(`{"type":"subscribe","room":"room-%d","id":%d}`, i%37, i))
			cs[i].expect(map[string]any{"type": "ack", "id": i})
		}
		if got := n.hub.Clients(); got != clients {
			t.Fatalf("got %d clients, want %d", got, clients)
		}
		// Clients registered and joined the way Serve does it, whose teardown
		// the test holds back: Run cannot return before they are unregistered.
		held := make([]*Client, 10)
		for i := range held {
			held[i] = &Client{hub: n.hub, conn: cs[clients-1-i].conn} // Run cuts this connection
			if code := n.hub.register(held[i]); code != 0 {
				t.Fatalf("register: refused with %d", code)
			}
			n.hub.join(held[i], fmt.Sprintf("held-%d", i%3))
		}
		n.hub.mu.RLock()
		registered := n.hub.clientsLocked() // the Serve ones and the held ones
		n.hub.mu.RUnlock()

		// Half of the clients hang up at the moment the hub stops.
		var wg sync.WaitGroup
		for _, c := range cs[:clients/2] {
			wg.Go(func() { c.conn.CloseNow() })
		}
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		wg.Wait()
		synctest.Wait() // every Serve has returned; Run waits for the held clients
		select {
		case <-stopped:
			t.Fatal("Run returned with clients still registered")
		default:
		}
		if got := n.hub.Clients(); got != len(held) {
			t.Fatalf("while Run waits: got %d clients, want the %d held ones", got, len(held))
		}
		// Their teardown, with Run's loop gone, returns at once and lets Run return.
		for _, c := range held {
			n.hub.unregister(c)
		}
		<-stopped
		if got := n.hub.Clients(); got != 0 {
			t.Errorf("after Run returned: got %d clients, want 0", got)
		}
		if got := n.hub.Rooms(); got != 0 {
			t.Errorf("after Run returned: got %d rooms, want 0", got)
		}
		for _, c := range cs[clients/2:] {
			if _, err := c.read(); err == nil {
				t.Fatal("a client could still read after the hub stopped")
			}
			c.conn.CloseNow()
		}
		// Teardown after Run returned returns at once, however often it is
		// called, and counts each client once.
		for range 3 {
			for _, c := range registered {
				n.hub.unregister(c)
			}
		}
		if got := counterValue(t, n.hub.metrics.connections); got != 0 {
			t.Errorf("after repeated teardowns: hub_connections got %v, want 0", got)
		}
		if got := counterValue(t, n.hub.metrics.rooms); got != 0 {
			t.Errorf("after repeated teardowns: hub_rooms got %v, want 0", got)
		}
		synctest.Wait()
	})
}

func TestServeAfterStopIsRefusedWith1013(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		n.run()()
		c := n.dial()
		c.expectClose(websocket.StatusTryAgainLater)
		if got := n.hub.Clients(); got != 0 {
			t.Errorf("got %d clients, want 0", got)
		}
	})
}

func TestRunTwiceFails(t *testing.T) {
	h, err := New(Config{NodeID: "n"}, nilBroker{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Run(ctx); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := h.Run(ctx); err == nil {
		t.Fatal("second Run: got nil error, want one")
	}
}

// A client that never reads is cut off with 4000 when its queue overflows;
// everyone else gets every message, in order.
func TestSlowConsumerIsCutOffAndOthersUnaffected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{SendQueue: 16, PingInterval: -1}) // no reader answers pings after the test reads
		defer n.run()()
		slow, fast := n.dial(), n.dial()
		for _, c := range []*testClient{slow, fast} {
			c.join("r")
		}
		const msgs = 500
		var got []map[string]any
		done := make(chan struct{})
		go func() {
			defer close(done)
			var pending []map[string]any
			for len(got) < msgs {
				got = append(got, fast.next(&pending))
			}
		}()
		for i := range msgs {
			if err := n.hub.Publish(context.Background(), "r", fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatalf("publish: %v", err)
			}
			synctest.Wait() // the fast reader keeps up; the slow one never reads
		}
		<-done
		for i, m := range got {
			checkObject(t, m, map[string]any{"type": "message", "room": "r", "data": i})
		}
		// The slow peer's blocked write runs into its deadline (fake time).
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := n.hub.Clients(); got != 1 {
			t.Errorf("got %d clients, want 1 (the slow one cut off)", got)
		}
		if got := counterValue(t, n.hub.metrics.overflows); got != 1 {
			t.Errorf("got %v queue overflows, want 1", got)
		}
		if got := counterValue(t, n.hub.metrics.closes.WithLabelValues("4000")); got != 1 {
			t.Errorf("got %v closes with 4000, want 1", got)
		}
	})
}

// Messages that queue up while a write is in flight go out together, one
// newline-separated frame, in order.
func TestQueuedMessagesAreBatched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		defer n.run()()
		c := n.dial()
		c.join("r")
		const msgs = 50
		for i := range msgs {
			if err := n.hub.Publish(context.Background(), "r", fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
		synctest.Wait() // the writer is blocked on the first write; the rest wait
		var frames, seen int
		for seen < msgs {
			objs, err := c.read()
			if err != nil {
				t.Fatal(err)
			}
			frames++
			for _, m := range objs {
				checkObject(t, m, map[string]any{"type": "message", "data": seen})
				seen++
			}
		}
		if frames > 2 {
			t.Errorf("got %d frames for %d queued messages, want at most 2", frames, msgs)
		}
	})
}

func TestBadInputGetsErrorAndConnectionStaysOpen(t *testing.T) {
	tests := []struct {
		name, frame, code string
		id                any
	}{
		{"malformed JSON", `{"type":"subscribe",`, "bad_request", nil},
		{"not an object", `[1,2]`, "bad_request", nil},
		{"unknown type", `{"type":"dance","room":"r","id":7}`, "bad_request", 7},
		{"missing type", `{"room":"r","id":"x"}`, "bad_request", "x"},
		{"missing room", `{"type":"subscribe","id":1}`, "bad_room", 1},
		{"empty room", `{"type":"subscribe","room":"","id":1}`, "bad_room", 1},
		{"room with space", `{"type":"subscribe","room":"a b","id":1}`, "bad_room", 1},
		{"room too long", `{"type":"publish","room":"` + strings.Repeat("a", 129) + `","data":1,"id":1}`, "bad_room", 1},
		{"publish without data", `{"type":"publish","room":"r","id":2}`, "bad_request", 2},
		{"object id", `{"type":"subscribe","room":"r","id":{}}`, "bad_request", nil},
		{"unsubscribe not joined", `{"type":"unsubscribe","room":"r","id":3}`, "not_subscribed", 3},
	}
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		defer n.run()()
		c := n.dial()
		for _, tt := range tests {
			c.sendRaw(tt.frame)
			want := map[string]any{"type": "error", "code": tt.code}
			if tt.id != nil {
				want["id"] = tt.id
			}
			c.expect(want)
		}
		if err := c.conn.Write(context.Background(), websocket.MessageBinary, []byte(`{"type":"subscribe","room":"r"}`)); err != nil {
			t.Fatal(err)
		}
		c.expect(map[string]any{"type": "error", "code": "bad_request"})
		// Still open, still working.
		c.sendRaw(`{"type":"subscribe","room":"r","id":9}`)
		c.expect(map[string]any{"type": "ack", "id": 9})
	})
}

func TestSeveralObjectsInOneFrame(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		defer n.run()()
		c := n.dial()
		c.sendRaw("{\"type\":\"subscribe\",\"room\":\"r\",\"id\":1}\n{\"type\":\"publish\",\"room\":\"r\",\"data\":\"x\",\"id\":2}\n\n{\"type\":\"unsubscribe\",\"room\":\"r\",\"id\":3}\n")
		var pending []map[string]any
		for _, want := range []map[string]any{
			{"type": "ack", "id": 1},
			{"type": "message", "room": "r", "data": "x"},
			{"type": "ack", "id": 2},
			{"type": "ack", "id": 3},
		} {
			checkObject(t, c.next(&pending), want)
		}
		if got := n.hub.Rooms(); got != 0 {
			t.Errorf("after unsubscribe: got %d rooms, want 0", got)
		}
	})
}

func TestBadFramesClose(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
		code  websocket.StatusCode
	}{
		{"too large", []byte(`{"type":"publish","room":"r","data":"` + strings.Repeat("x", 300) + `"}`), websocket.StatusMessageTooBig},
		{"invalid UTF-8", []byte("{\"type\":\"publish\",\"room\":\"r\",\"data\":\"\xff\xfe\"}"), websocket.StatusInvalidFramePayloadData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := newTestNode(t, Config{MaxMessageBytes: 256})
				defer n.run()()
				c := n.dial()
				if err := c.conn.Write(context.Background(), websocket.MessageText, tt.frame); err != nil {
					t.Fatal(err)
				}
				c.expectClose(tt.code)
				synctest.Wait()
				if got := n.hub.Clients(); got != 0 {
					t.Errorf("got %d clients, want 0", got)
				}
			})
		})
	}
}

// Keepalive: a peer that answers pings stays; one that does not is cut.
func TestKeepaliveCutsDeadPeers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{PingInterval: 10 * time.Second, WriteTimeout: 2 * time.Second})
		defer n.run()()
		alive, dead := n.dial(), n.dial()
		readErr := make(chan error, 1)
		go func() { _, err := alive.read(); readErr <- err }() // reading answers pings
		synctest.Wait()
		time.Sleep(time.Minute)
		// The slow peer's blocked write runs into its deadline (fake time).
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := n.hub.Clients(); got != 1 {
			t.Fatalf("after a minute: got %d clients, want 1 (the dead peer cut)", got)
		}
		if _, err := dead.read(); err == nil {
			t.Error("the dead peer's connection is still open")
		}
		alive.conn.CloseNow()
		<-readErr
	})
}

func TestPublisherOrderIsKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{SendQueue: 4096})
		defer n.run()()
		sub, pub := n.dial(), n.dial()
		sub.sendRaw(`{"type":"subscribe","room":"r","id":0}`)
		sub.expect(map[string]any{"type": "ack", "id": 0})
		const msgs = 2000
		go func() {
			for i := range msgs {
				pub.sendRaw(fmt.Sprintf(`{"type":"publish","room":"r","data":%d}`, i))
			}
		}()
		var pending []map[string]any
		for i := range msgs {
			checkObject(t, sub.next(&pending), map[string]any{"data": i})
		}
	})
}

func TestDeliverDropsOwnPayloadsAndServesOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{NodeID: "me"})
		defer n.run()()
		c := n.dial()
		c.join("r")
		n.hub.Deliver("r", "me\n"+`{"type":"message","room":"r","data":"own"}`)
		n.hub.Deliver("r", "garbage-without-newline")
		n.hub.Deliver("r", "other\n"+`{"type":"message","room":"r","data":"theirs"}`)
		n.hub.Gap([]string{"r", "nobody-here"})
		var pending []map[string]any
		checkObject(t, c.next(&pending), map[string]any{"type": "message", "data": "theirs"})
		checkObject(t, c.next(&pending), map[string]any{"type": "gap", "room": "r"})
		if got := counterValue(t, n.hub.metrics.badPayloads); got != 1 {
			t.Errorf("got %v bad payloads, want 1", got)
		}
	})
}

func TestPublishFailsWhenBrokerRefuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{})
		defer n.run()()
		c := n.dial()
		c.join("r")
		n.broker.Close()
		c.sendRaw(`{"type":"publish","room":"r","data":1,"id":2}`)
		c.expect(map[string]any{"type": "error", "code": "unavailable", "id": 2})
		if err := n.hub.Publish(context.Background(), "r", []byte("1")); err == nil {
			t.Error("Publish on a closed broker: got nil error")
		}
	})
}

func TestNewRejectsBadNodeID(t *testing.T) {
	for _, id := range []string{"", "a\nb"} {
		if _, err := New(Config{NodeID: id}, nilBroker{}); err == nil {
			t.Errorf("New with node id %q: got nil error", id)
		}
	}
}

type nilBroker struct{}

func (nilBroker) Publish(context.Context, string, []byte) error      { return errors.New("no broker") }
func (nilBroker) Subscribe(string)                                   {}
func (nilBroker) Unsubscribe(string)                                 {}
func (nilBroker) WaitSubscribed(ctx context.Context, _ string) error { return nil }

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}
