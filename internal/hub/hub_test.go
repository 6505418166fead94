package hub

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/pubsub"
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
		n.hub.mu.Lock()
		registered := n.hub.clientsLocked() // the Serve ones and the held ones
		n.hub.mu.Unlock()

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

// A client that never reads falls behind, and once it has been behind for
// SlowTimeout it is cut off with 4000; everyone else gets every message, in
// order.
func TestSlowConsumerIsCutOffAndOthersUnaffected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{SendQueue: 16, SlowTimeout: 2 * time.Second, PingInterval: -1, WriteTimeout: time.Hour})
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
			if _, err := n.hub.Publish(context.Background(), "r", fmt.Appendf(nil, "%d", i), ""); err != nil {
				t.Fatalf("publish: %v", err)
			}
			synctest.Wait()                  // the fast reader keeps up; the slow one never reads
			time.Sleep(5 * time.Millisecond) // 200 messages a second
		}
		<-done
		for i, m := range got {
			checkObject(t, m, map[string]any{"type": "message", "room": "r", "data": i})
		}
		// The close handshake with the peer that reads nothing times out.
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

// Regression (review defect 12): a burst the node hands its members all at
// once (publishes that waited on a stalled broker completing together) is
// not slowness: members that read at their usual pace are not cut, even
// though the burst is larger than their SendQueue.
func TestBurstDoesNotCutHealthyReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newStallBroker()
		h, err := New(Config{NodeID: "n", SendQueue: 16, SlowTimeout: time.Second}, b)
		if err != nil {
			t.Fatal(err)
		}
		n := newTestNodeFor(t, h, b.Memory)
		defer n.run()()
		const members, burst = 20, 400
		readers := make([]*testClient, members)
		for i := range readers {
			readers[i] = n.dial()
			readers[i].join("r")
		}
		var wg sync.WaitGroup
		for _, c := range readers {
			wg.Go(func() {
				var pending []map[string]any
				for i := range burst {
					checkObject(t, c.next(&pending), map[string]any{"type": "message", "data": i})
					if i%50 == 0 {
						time.Sleep(2 * time.Millisecond) // a reader with a 2 ms hiccup now and then
					}
				}
			})
		}
		// Publishes that wait on a stalled broker, then land all at once.
		b.stall()
		for i := range burst {
			h.publish(pubsub.Publication{Room: "r", Data: fmt.Appendf(nil, "%d", i)}, func(_ pubsub.Receipt, err error) {
				if err != nil {
					t.Errorf("publish %d: %v", i, err)
				}
			})
		}
		synctest.Wait()
		b.release()
		wg.Wait()
		if got := counterValue(t, h.metrics.overflows); got != 0 {
			t.Errorf("got %v members cut as slow after a burst, want 0", got)
		}
		if got := h.Clients(); got != members {
			t.Errorf("got %d clients, want %d", got, members)
		}
	})
}

// Overload is explicit (performance issue): while a tenth of the clients are
// behind, the node refuses new publishes with unavailable instead of queueing
// more, and does not cut the members that fall behind with it; once they
// catch up it takes publishes again.
func TestOverloadRefusesPublishesAndCutsNoOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{SendQueue: 4, SlowTimeout: 10 * time.Millisecond, PingInterval: -1, WriteTimeout: time.Hour})
		defer n.run()()
		var cs []*testClient
		for range 10 {
			c := n.dial()
			c.join("r")
			cs = append(cs, c)
		}
		ctx := context.Background()
		// Nobody reads: every member falls behind together (the node is the
		// one that cannot keep up here).
		var refused int
		for i := range 40 {
			if _, err := n.hub.Publish(ctx, "r", fmt.Appendf(nil, "%d", i), ""); errors.Is(err, pubsub.ErrUnavailable) {
				refused++
			}
			synctest.Wait()
			time.Sleep(5 * time.Millisecond)
		}
		if refused == 0 {
			t.Error("no publish was refused while every member was behind")
		}
		if got := counterValue(t, n.hub.metrics.overflows); got != 0 {
			t.Errorf("%v members cut as slow while the whole node was behind, want 0", got)
		}
		// They read again, catch up, and publishes are taken.
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Go(func() {
				for {
					if _, err := c.read(); err != nil {
						return
					}
				}
			})
		}
		synctest.Wait()
		if _, err := n.hub.Publish(ctx, "r", []byte(`"again"`), ""); err != nil {
			t.Errorf("publish after the members caught up: %v", err)
		}
		t.Logf("%d of 40 publishes refused while every member was behind", refused)
		for _, c := range cs {
			c.conn.CloseNow()
		}
		wg.Wait()
	})
}

// The byte bound of a queue is hard: a client that reads nothing while large
// messages pile up is cut as soon as its queue passes SendQueueBytes.
func TestQueueByteBoundCutsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{SendQueue: 100000, SendQueueBytes: 64 << 10, SlowTimeout: time.Hour, PingInterval: -1})
		defer n.run()()
		c := n.dial()
		c.join("r")
		big := []byte(`"` + strings.Repeat("x", 8<<10) + `"`)
		for range 12 {
			if _, err := n.hub.Publish(context.Background(), "r", big, ""); err != nil {
				t.Fatal(err)
			}
			synctest.Wait() // the writer is stuck on its first frame; the rest queue up
		}
		if got := counterValue(t, n.hub.metrics.overflows); got != 1 {
			t.Errorf("got %v overflows, want 1", got)
		}
		c.expectClose(websocket.StatusCode(4000))
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
			if _, err := n.hub.Publish(context.Background(), "r", fmt.Appendf(nil, "%d", i), ""); err != nil {
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
		n.hub.Deliver(pubsub.Message{Room: "r", Origin: "me", Data: []byte(`"own"`)})
		n.hub.Deliver(pubsub.Message{Room: "r", Origin: "other", Data: []byte(`"theirs"`)})
		n.hub.Deliver(pubsub.Message{Room: "elsewhere", Origin: "other", Data: []byte(`"nobody here"`)})
		n.hub.Resync([]string{"r", "nobody-here"})
		var pending []map[string]any
		checkObject(t, c.next(&pending), map[string]any{"type": "message", "data": "theirs"})
		checkObject(t, c.next(&pending), map[string]any{"type": "gap", "room": "r"})
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
		if _, err := n.hub.Publish(context.Background(), "r", []byte("1"), ""); err == nil {
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

func (nilBroker) Publish(_ pubsub.Publication, done func(pubsub.Receipt, error)) {
	done(pubsub.Receipt{}, fmt.Errorf("%w: no broker", pubsub.ErrUnavailable))
}
func (nilBroker) Subscribe(string)                                   {}
func (nilBroker) Unsubscribe(string)                                 {}
func (nilBroker) Subscribed(string) bool                             { return true }
func (nilBroker) WaitSubscribed(ctx context.Context, _ string) error { return nil }
func (nilBroker) Position(context.Context, string) (string, uint64, error) {
	return "", 0, pubsub.ErrNoHistory
}
func (nilBroker) History(context.Context, string, uint64, int) (pubsub.History, error) {
	return pubsub.History{}, pubsub.ErrNoHistory
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

// stallBroker is the in-memory broker with a switch that stalls it, as a
// Redis that stops answering would: publications wait, subscriptions do not
// go live, until it is released.
type stallBroker struct {
	*pubsub.Memory
	mu       sync.Mutex
	stalled  bool
	held     []func()
	released chan struct{}
}

func newStallBroker() *stallBroker {
	return &stallBroker{Memory: pubsub.NewMemory(pubsub.MemoryConfig{}), released: make(chan struct{})}
}

func (b *stallBroker) stall() {
	b.mu.Lock()
	b.stalled, b.released = true, make(chan struct{})
	b.mu.Unlock()
}

// release answers what waits, in the order it came (as Redis's one
// pipeline would), then lets new requests through.
func (b *stallBroker) release() {
	for {
		b.mu.Lock()
		held := b.held
		b.held = nil
		if len(held) == 0 {
			b.stalled = false
			close(b.released)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		for _, f := range held {
			f()
		}
	}
}

func (b *stallBroker) Publish(p pubsub.Publication, done func(pubsub.Receipt, error)) {
	b.mu.Lock()
	if b.stalled {
		b.held = append(b.held, func() { b.Memory.Publish(p, done) })
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.Memory.Publish(p, done)
}

func (b *stallBroker) Subscribed(room string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.stalled && b.Memory.Subscribed(room)
}

func (b *stallBroker) WaitSubscribed(ctx context.Context, room string) error {
	b.mu.Lock()
	ch, stalled := b.released, b.stalled
	b.mu.Unlock()
	if stalled {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Memory.WaitSubscribed(ctx, room)
}

// Regression (review defect 2): while the broker stalls, a client that
// publishes well under its rate limit is never rate limited or cut: its
// requests are charged as they arrive, not when the node gets to them. When
// the broker is back every publish is answered, in order.
func TestBrokerStallDoesNotRateLimitWellBehavedPublishers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newStallBroker()
		h, err := New(Config{NodeID: "n", ClientRate: 100, ClientBurst: 200, PingInterval: -1, BrokerTimeout: time.Minute}, b)
		if err != nil {
			t.Fatal(err)
		}
		n := newTestNodeFor(t, h, b.Memory)
		defer n.run()()
		sub, pub := n.dial(), n.dial()
		sub.join("r")
		b.stall()
		// 30 publishes a second for 9 s, and a subscribe stuck behind the
		// stalled broker in the middle (the requests after it wait in order).
		const msgs = 270
		for i := range msgs {
			if i == 100 {
				pub.sendRaw(`{"type":"subscribe","room":"other","id":"s"}`)
			}
			pub.sendRaw(fmt.Sprintf(`{"type":"publish","room":"r","data":%d,"id":%d}`, i, i))
			time.Sleep(time.Second / 30)
		}
		synctest.Wait()
		b.release()
		acks := 0
		var pending []map[string]any
		for acks < msgs+1 {
			m := pub.next(&pending)
			if m["type"] != "ack" {
				t.Fatalf("publisher got %v, want only acks (no rate_limited, no close)", m)
			}
			acks++
		}
		var got []map[string]any
		var subPending []map[string]any
		for len(got) < msgs {
			got = append(got, sub.next(&subPending))
		}
		for i, m := range got {
			checkObject(t, m, map[string]any{"type": "message", "data": i})
		}
		if v := counterValue(t, h.metrics.rateLimited); v != 0 {
			t.Errorf("hub_rate_limited_total: got %v, want 0", v)
		}
	})
}

// Regression (review defect 14): every protocol violation closes with 1002;
// two of them used to end the connection with a bare EOF.
func TestProtocolViolationsCloseWith1002(t *testing.T) {
	h, err := New(Config{NodeID: "p"}, pubsub.NewMemory(pubsub.MemoryConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := Accept(w, r, nil); err == nil {
			h.Serve(c, ConnInfo{})
		}
	}))
	defer srv.Close()
	defer h.stop()
	mask := []byte{1, 2, 3, 4}
	tests := []struct {
		name  string
		frame []byte
	}{
		{"unmasked frame", []byte{0x81, 0x02, 'h', 'i'}},
		{"negative length", append([]byte{0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, mask...)},
		{"reserved bits", []byte{0xC1, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}},
		{"unknown opcode", []byte{0x83, 0x80, 1, 2, 3, 4}},
		{"fragmented ping", []byte{0x09, 0x80, 1, 2, 3, 4}},
		{"ping too long", append([]byte{0x89, 0xFE, 0, 200}, mask...)},
		{"lone continuation", []byte{0x80, 0x80, 1, 2, 3, 4}},
		{"bad close code", []byte{0x88, 0x82, 1, 2, 3, 4, 0 ^ 1, 5 ^ 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
			br := bufio.NewReader(conn)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if line == "\r\n" {
					break
				}
			}
			conn.Write(tt.frame)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			head := make([]byte, 4)
			if _, err := io.ReadFull(br, head); err != nil {
				t.Fatalf("got %v, want a close frame", err)
			}
			if head[0] != 0x88 || int(head[2])<<8|int(head[3]) != 1002 {
				t.Fatalf("got frame %x, want a close with code 1002", head)
			}
		})
	}
}

// Adaptive batching: an idle client's message is written at once (no added
// latency); messages to a client written to a moment ago wait for the
// flusher's tick and go out together, in order.
func TestAdaptiveBatching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{PingInterval: -1})
		defer n.run()()
		c := n.dial()
		c.join("r")
		frames := make(chan []map[string]any, 1000)
		go func() {
			for {
				objs, err := c.read()
				if err != nil {
					close(frames)
					return
				}
				frames <- objs
			}
		}()
		time.Sleep(time.Second) // idle since the subscribe's ack
		start := time.Now()
		if _, err := n.hub.Publish(context.Background(), "r", []byte("0"), ""); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		first := <-frames
		if took := time.Since(start); took != 0 || len(first) != 1 {
			t.Fatalf("idle client: got %d objects after %v, want the message at once", len(first), took)
		}
		// Now busy: 50 messages 100µs apart, all within the hot window of the
		// previous write.
		for i := 1; i <= 50; i++ {
			if _, err := n.hub.Publish(context.Background(), "r", fmt.Appendf(nil, "%d", i), ""); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Microsecond)
		}
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		got, count := 1, 0
		for got <= 50 {
			objs := <-frames
			count++
			for _, m := range objs {
				checkObject(t, m, map[string]any{"type": "message", "data": got})
				got++
			}
		}
		if count > 15 {
			t.Errorf("busy client: 50 messages came in %d frames, want them batched (a few per tick)", count)
		}
		t.Logf("50 messages 100µs apart to a busy client: %d frames", count)
	})
}
