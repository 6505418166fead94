package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// queueClient is a client whose writer counts as busy: what the hub sends
// it stays in its queue, for a test to read.
func queueClient(h *Hub) *Client {
	c := &Client{hub: h}
	c.ctx, c.cancel = context.WithCancel(h.ctx)
	c.w.state = wWriting
	h.register(c)
	return c
}

// queued takes what was sent to c, decoded.
func queued(t *testing.T, c *Client) []map[string]any {
	t.Helper()
	c.w.mu.Lock()
	q := c.w.queue
	c.w.queue, c.w.bytes = nil, 0
	c.w.mu.Unlock()
	out := make([]map[string]any, 0, len(q))
	for _, f := range q {
		var m map[string]any
		if err := json.Unmarshal(f, &m); err != nil {
			t.Fatalf("frame %q is not JSON: %v", f, err)
		}
		out = append(out, m)
	}
	return out
}

// offsetsOf returns the offsets of the messages in objs, and counts gaps.
func offsetsOf(objs []map[string]any) (offs []uint64, gaps int) {
	for _, m := range objs {
		switch m["type"] {
		case "message":
			offs = append(offs, uint64(m["offset"].(float64)))
		case "gap":
			gaps++
		}
	}
	return offs, gaps
}

// Property: whatever order messages reach a room in (the live stream with
// holes, this node's own receipts early, duplicates of both), every member
// gets offsets 1..N exactly once and in order, the holes read back from the
// history, and no gap while the history holds everything.
func TestRoomSequencerDeliversEveryOffsetOnceInOrder(t *testing.T) {
	for seed := range uint64(200) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { checkSequencer(t, seed) })
		})
	}
}

func checkSequencer(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b9))
	const n = 60
	mem := pubsub.NewMemory(pubsub.MemoryConfig{HistorySize: 1000})
	h, err := New(Config{NodeID: "n", HistorySize: 1000}, mem)
	if err != nil {
		t.Fatal(err)
	}
	defer h.cancel()
	c := queueClient(h)
	m, _, err := h.join(c, "r")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := h.finishSubscribe(ctx, m, decodeReq(t, `{"type":"subscribe","room":"r"}`), true); err != nil {
		t.Fatal(err)
	}
	// Store n messages, then hand them to the room in a shuffled, lossy,
	// duplicated order, over both paths.
	var msgs []pubsub.Message
	for i := range n {
		// Straight to the broker: the hub sees only what the test hands it.
		done := make(chan pubsub.Receipt, 1)
		mem.Publish(pubsub.Publication{Room: "r", Data: fmt.Appendf(nil, "%d", i+1)}, func(rc pubsub.Receipt, err error) { done <- rc })
		rc := <-done
		msgs = append(msgs, pubsub.Message{Room: "r", Epoch: rc.Epoch, Offset: rc.Offset, Data: fmt.Appendf(nil, "%d", i+1)})
	}
	var events []func()
	r := h.rooms.get("r")
	for _, msg := range msgs {
		if rng.IntN(4) != 0 { // the live stream loses a quarter
			events = append(events, func() { h.Deliver(msg) })
		}
		if rng.IntN(3) == 0 { // some came back as this node's own receipt
			events = append(events, func() {
				r.mu.Lock()
				r.acceptLocked(msg, false)
				r.mu.Unlock()
			})
		}
	}
	// Live messages keep their order among themselves; receipts come in
	// anywhere.
	for i := len(events) - 1; i > 0; i-- {
		if rng.IntN(3) == 0 {
			j := rng.IntN(i + 1)
			events[i], events[j] = events[j], events[i]
		}
	}
	for _, ev := range events {
		ev()
		if rng.IntN(5) == 0 {
			synctest.Wait() // let a fill run now and then
		}
	}
	// The last message arrives live at the end, so a hole before it is
	// noticed (a lost tail is what Resync is for).
	h.Deliver(msgs[n-1])
	synctest.Wait()
	offs, gaps := offsetsOf(queued(t, c))
	if gaps != 0 {
		t.Errorf("got %d gaps, want none: the history held everything", gaps)
	}
	if len(offs) != n {
		t.Fatalf("got %d messages %v, want %d", len(offs), offs, n)
	}
	for i, off := range offs {
		if off != uint64(i+1) {
			t.Fatalf("message %d: got offset %d, want %d (all: %v)", i, off, i+1, offs)
		}
	}
}

// A hole the history no longer holds (trimmed) is told as one gap, and the
// messages after it still arrive, in order.
func TestRoomSequencerTellsGapForTrimmedHoles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := pubsub.NewMemory(pubsub.MemoryConfig{HistorySize: 5})
		h, err := New(Config{NodeID: "n", HistorySize: 5}, mem)
		if err != nil {
			t.Fatal(err)
		}
		defer h.cancel()
		c := queueClient(h)
		m, _, _ := h.join(c, "r")
		ctx := context.Background()
		if err := h.finishSubscribe(ctx, m, decodeReq(t, `{"type":"subscribe","room":"r"}`), true); err != nil {
			t.Fatal(err)
		}
		var msgs []pubsub.Message
		for i := range 20 {
			done := make(chan pubsub.Receipt, 1)
			mem.Publish(pubsub.Publication{Room: "r", Data: fmt.Appendf(nil, "%d", i+1)}, func(rc pubsub.Receipt, err error) { done <- rc })
			rc := <-done
			msgs = append(msgs, pubsub.Message{Room: "r", Epoch: rc.Epoch, Offset: rc.Offset, Data: fmt.Appendf(nil, "%d", i+1)})
		}
		h.Deliver(msgs[0])
		h.Deliver(msgs[1])
		h.Deliver(msgs[19]) // 3..19 lost live; the history keeps 16..20 only
		synctest.Wait()
		offs, gaps := offsetsOf(queued(t, c))
		want := []uint64{1, 2, 16, 17, 18, 19, 20}
		if fmt.Sprint(offs) != fmt.Sprint(want) || gaps != 1 {
			t.Fatalf("got offsets %v and %d gaps, want %v and 1 gap", offs, gaps, want)
		}
	})
}

// A member that recovers while the room goes on gets every message after its
// place exactly once, in order: the recovered ones, the ack, then the live
// ones, with no duplicate or hole at the seam. Real goroutines, for the race
// detector.
func TestRecoverySeamUnderConcurrentPublishes(t *testing.T) {
	n := newTestNode(t, Config{HistorySize: 100, SendQueue: 4096, ClientRate: 0})
	defer n.run()()
	ctx := context.Background()
	first := n.dial()
	first.sendRaw(`{"type":"subscribe","room":"r","id":1}`)
	var pending []map[string]any
	ack := first.next(&pending)
	epoch := ack["epoch"].(string)
	for i := range 30 {
		if _, err := n.hub.Publish(ctx, "r", fmt.Appendf(nil, "%d", i+1), ""); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 31; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := n.hub.Publish(ctx, "r", fmt.Appendf(nil, "%d", i), ""); err != nil {
				t.Error(err)
				return
			}
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	late := n.dial()
	late.sendRaw(fmt.Sprintf(`{"type":"subscribe","room":"r","id":2,"since":{"offset":10,"epoch":%q}}`, epoch))
	var lp []map[string]any
	want := uint64(11)
	sawAck := false
	for want < 200 {
		m := late.next(&lp)
		switch m["type"] {
		case "ack":
			if m["recovered"] != true || sawAck {
				t.Fatalf("got ack %v, want one ack with recovered true", m)
			}
			sawAck = true
			if off := uint64(m["offset"].(float64)); off != want-1 {
				t.Fatalf("ack says offset %d, but %d messages came before it: the seam is off", off, want-1)
			}
		case "message":
			if got := uint64(m["offset"].(float64)); got != want {
				t.Fatalf("got offset %d, want %d", got, want)
			}
			want++
		default:
			t.Fatalf("got %v", m)
		}
	}
	close(stop)
	wg.Wait()
	if !sawAck {
		t.Fatal("no ack came")
	}
}

func decodeReq(t *testing.T, line string) wire.Request {
	t.Helper()
	r, err := wire.Decode([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return r
}
