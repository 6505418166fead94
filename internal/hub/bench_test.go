package hub

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/pubsub"
)

// BenchmarkBroadcast publishes to a room whose members are real WebSocket
// clients on loopback, and reports allocations per delivered message: the
// whole path, hub queueing and socket writes included.
func BenchmarkBroadcast(b *testing.B) {
	for _, members := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			h, err := New(Config{NodeID: "bench", SendQueue: 1 << 16, SendQueueBytes: 1 << 30, PingInterval: -1}, pubsub.NewMemory(pubsub.MemoryConfig{}))
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var running sync.WaitGroup
			running.Go(func() { h.Run(ctx) })
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if c, err := Accept(w, r, nil); err == nil {
					h.Serve(c, ConnInfo{})
				}
			}))
			var received atomic.Int64
			var readers sync.WaitGroup
			url := "ws" + strings.TrimPrefix(srv.URL, "http")
			for range members {
				c, _, err := websocket.Dial(context.Background(), url, nil)
				if err != nil {
					b.Fatal(err)
				}
				c.SetReadLimit(-1)
				c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","room":"r","id":1}`))
				c.Read(context.Background()) // the ack
				readers.Go(func() {
					for {
						_, p, err := c.Read(context.Background())
						if err != nil {
							return
						}
						received.Add(int64(strings.Count(string(p), "\n") + 1))
					}
				})
			}
			data := []byte(`{"text":"` + strings.Repeat("x", 80) + `"}`)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for range b.N {
				if _, err := h.Publish(context.Background(), "r", data, ""); err != nil {
					b.Fatal(err)
				}
			}
			want := int64(b.N) * int64(members)
			for received.Load() < want {
				if h.Clients() < members {
					b.Fatalf("a member was cut: %d of %d connected, %d of %d delivered", h.Clients(), members, received.Load(), want)
				}
				runtime.Gosched()
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(want), "allocs/delivery")
			b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "deliveries/s")
			cancel()
			running.Wait()
			readers.Wait()
			srv.Close()
		})
	}
}

// BenchmarkBroadcastHandoff measures the hub's own part of a publish: build
// the frame once and queue it for every member, with no socket involved (the
// members' writers are held busy). It reports allocations per delivered
// message: the frame is shared, so they are the publish's few, divided by the
// members.
func BenchmarkBroadcastHandoff(b *testing.B) {
	for _, members := range []int{100, 1000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			h, err := New(Config{NodeID: "bench", SendQueue: 1 << 20, SendQueueBytes: 1 << 30, PingInterval: -1}, pubsub.NewMemory(pubsub.MemoryConfig{}))
			if err != nil {
				b.Fatal(err)
			}
			clients := make([]*Client, members)
			for i := range clients {
				c := &Client{hub: h} // a writer "runs": nothing is written
				c.w.state = wWriting
				h.register(c)
				m, _, _ := h.join(c, "r")
				m.live = true
				clients[i] = c
			}
			data := []byte(`{"text":"` + strings.Repeat("x", 80) + `"}`)
			ctx := context.Background()
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := 0; b.Loop(); i++ {
				if _, err := h.Publish(ctx, "r", data, ""); err != nil {
					b.Fatal(err)
				}
				if i%64 == 63 { // empty the queues now and then, as writers would
					for _, c := range clients {
						c.w.mu.Lock()
						c.w.queue, c.w.bytes = c.w.queue[:0], 0
						c.w.mu.Unlock()
					}
				}
			}
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N*members), "allocs/delivery")
			for _, c := range clients {
				h.unregister(c)
			}
		})
	}
}
