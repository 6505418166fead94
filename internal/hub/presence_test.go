package hub

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/pubsub"
)

// presenceNode is a test node whose memory broker serves presence and runs.
func presenceNode(t *testing.T, cfg Config) (*testNode, func()) {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "test"
	}
	cfg.PingInterval = -1
	broker := pubsub.NewMemory(pubsub.MemoryConfig{})
	cfg.Presence = broker
	h, err := New(cfg, broker)
	if err != nil {
		t.Fatal(err)
	}
	n := newTestNodeFor(t, h, broker)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { broker.Run(ctx, h) })
	stopHub := n.run()
	return n, func() { stopHub(); cancel(); wg.Wait() }
}

func TestPresenceEventsReachWatchersOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, stop := presenceNode(t, Config{})
		defer stop()
		watcher, plain := n.dial(), n.dial()
		var wp, pp []map[string]any
		watcher.sendRaw(`{"type":"subscribe","room":"r","id":1,"presence":true}`)
		checkObject(t, watcher.next(&wp), map[string]any{"type": "ack", "id": 1, "room": "r"})
		own := watcher.next(&wp)
		checkObject(t, own, map[string]any{"type": "join", "room": "r", "user": "", "node": "test"})
		if id, _ := own["client"].(string); !strings.HasPrefix(id, "test.") {
			t.Fatalf("client id: got %q, want test.<n>", id)
		}
		plain.sendRaw(`{"type":"subscribe","room":"r","id":1}`)
		checkObject(t, plain.next(&pp), map[string]any{"type": "ack", "id": 1})
		joined := watcher.next(&wp)
		checkObject(t, joined, map[string]any{"type": "join", "room": "r"})

		plain.sendRaw(`{"type":"presence","room":"r","id":2}`)
		reply := plain.next(&pp)
		checkObject(t, reply, map[string]any{"type": "presence", "id": 2, "room": "r", "count": 2})
		if ms, _ := reply["members"].([]any); len(ms) != 2 {
			t.Fatalf("members: got %v, want 2", reply["members"])
		}
		plain.sendRaw(`{"type":"unsubscribe","room":"r","id":3}`)
		checkObject(t, plain.next(&pp), map[string]any{"type": "ack", "id": 3})
		checkObject(t, watcher.next(&wp), map[string]any{"type": "leave", "room": "r", "client": joined["client"]})

		// The plain member hears no event: the next thing it gets is a message.
		plain.join("r")
		checkObject(t, watcher.next(&wp), map[string]any{"type": "join", "room": "r"})
		if _, err := n.hub.Publish(context.Background(), "r", []byte(`"m"`), ""); err != nil {
			t.Fatal(err)
		}
		checkObject(t, plain.next(&pp), map[string]any{"type": "message", "data": "m"})
		checkObject(t, watcher.next(&wp), map[string]any{"type": "message", "data": "m"})
	})
}

func TestPresenceLimitBoundsTheAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, stop := presenceNode(t, Config{PresenceLimit: 3})
		defer stop()
		for range 5 {
			n.dial().join("big")
		}
		c := n.dial()
		var p []map[string]any
		c.sendRaw(`{"type":"presence","room":"big","id":9}`)
		reply := c.next(&p)
		checkObject(t, reply, map[string]any{"type": "presence", "id": 9, "count": 5})
		if ms, _ := reply["members"].([]any); len(ms) != 3 {
			t.Fatalf("members: got %d, want 3 (the limit)", len(ms))
		}
		c.sendRaw(`{"type":"presence","room":"no room!","id":10}`)
		checkObject(t, c.next(&p), map[string]any{"type": "error", "id": 10, "code": "bad_room"})
	})
}

func TestOperatorCommandsActOnAUsersConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, err := auth.New(auth.Config{Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		n, stop := presenceNode(t, Config{Authenticator: v, Logger: slog.New(slog.DiscardHandler)})
		defer stop()
		dial := func(sub string) *testClient {
			c := n.dial()
			c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":1}`, token(t, time.Hour, map[string]any{"sub": sub})))
			c.expect(map[string]any{"type": "ack", "id": 1})
			c.join("chat:a")
			return c
		}
		u1a, u1b, u2 := dial("u1"), dial("u1"), dial("u2")
		var p []map[string]any
		u2.sendRaw(`{"type":"presence","room":"chat:a","id":5}`)
		reply := u2.next(&p)
		checkObject(t, reply, map[string]any{"type": "presence", "count": 3})
		users := map[string]int{}
		for _, m := range reply["members"].([]any) {
			users[m.(map[string]any)["user"].(string)]++
		}
		if users["u1"] != 2 || users["u2"] != 1 {
			t.Fatalf("users: got %v, want u1 twice and u2 once", users)
		}

		if err := n.hub.SendCommand(context.Background(), pubsub.Command{Op: "unsubscribe", User: "u2", Room: "chat:a"}); err != nil {
			t.Fatal(err)
		}
		checkObject(t, u2.next(&p), map[string]any{"type": "unsubscribed", "room": "chat:a", "code": "forbidden"})

		if err := n.hub.SendCommand(context.Background(), pubsub.Command{Op: "disconnect", User: "u1", Code: 4100, Reason: "banned"}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*testClient{u1a, u1b} {
			if ce := c.expectClose(websocket.StatusCode(4100)); ce.Reason != "banned" {
				t.Fatalf("close reason: got %q, want banned", ce.Reason)
			}
		}
		synctest.Wait()
		time.Sleep(presenceReuse) // the read shared with the request above has expired
		count, _, err := n.hub.PresenceOf(context.Background(), "chat:a")
		if err != nil || count != 0 {
			t.Fatalf("presence after both commands: got %d (%v), want 0", count, err)
		}
	})
}

// After the room's subscription was lost and came back, its watchers get a
// snapshot (a presence object with no id), since events may have been lost;
// plain members get none.
func TestPresenceSnapshotAfterResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, stop := presenceNode(t, Config{})
		defer stop()
		watcher, plain := n.dial(), n.dial()
		var wp, pp []map[string]any
		watcher.sendRaw(`{"type":"subscribe","room":"r","id":1,"presence":true}`)
		checkObject(t, watcher.next(&wp), map[string]any{"type": "ack", "id": 1})
		checkObject(t, watcher.next(&wp), map[string]any{"type": "join"})
		plain.join("r")
		checkObject(t, watcher.next(&wp), map[string]any{"type": "join"})
		n.hub.Resync([]string{"r"})
		// History is off here: the lost messages are told with a gap first.
		checkObject(t, watcher.next(&wp), map[string]any{"type": "gap", "room": "r"})
		checkObject(t, plain.next(&pp), map[string]any{"type": "gap", "room": "r"})
		snap := watcher.next(&wp)
		checkObject(t, snap, map[string]any{"type": "presence", "room": "r", "count": 2})
		if _, ok := snap["id"]; ok {
			t.Fatalf("snapshot: got id %v, want none (it answers no request)", snap["id"])
		}
		if _, err := n.hub.Publish(context.Background(), "r", []byte(`"m"`), ""); err != nil {
			t.Fatal(err)
		}
		checkObject(t, plain.next(&pp), map[string]any{"type": "message", "data": "m"})
	})
}

// A flood of presence requests for one room costs the store one read per
// round trip and per presenceReuse, not one per request.
func TestPresenceRequestsShareReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		broker := &countingPresence{Memory: pubsub.NewMemory(pubsub.MemoryConfig{})}
		h, err := New(Config{NodeID: "n", Presence: broker}, broker)
		if err != nil {
			t.Fatal(err)
		}
		broker.Join("r", pubsub.Member{Client: "c1"})
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				if n, _, err := h.PresenceOf(context.Background(), "r"); err != nil || n != 1 {
					t.Errorf("PresenceOf: got %d, %v; want 1", n, err)
				}
			})
		}
		wg.Wait()
		if got := broker.reads.Load(); got != 1 {
			t.Fatalf("store reads for 100 concurrent requests: got %d, want 1", got)
		}
		broker.Join("r", pubsub.Member{Client: "c2"})
		time.Sleep(presenceReuse + time.Millisecond)
		if n, _, _ := h.PresenceOf(context.Background(), "r"); n != 2 {
			t.Fatalf("after the reuse window: got %d members, want 2 (a fresh read)", n)
		}
		if got := broker.reads.Load(); got != 2 {
			t.Fatalf("store reads: got %d, want 2", got)
		}
		time.Sleep(time.Second) // the shared read's cleanup timer fires
		h.presMu.Lock()
		left := len(h.presReads)
		h.presMu.Unlock()
		if left != 0 {
			t.Fatalf("shared reads kept after their window: %d, want 0", left)
		}
	})
}

type countingPresence struct {
	*pubsub.Memory
	reads atomic.Int64
}

func (c *countingPresence) Members(ctx context.Context, room string, limit int) (int, []pubsub.Member, error) {
	c.reads.Add(1)
	time.Sleep(time.Millisecond) // a round trip: the requests overlap it
	return c.Memory.Members(ctx, room, limit)
}
