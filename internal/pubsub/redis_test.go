package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{}) // go-redis logs every failed dial; the tests make many
	goleak.VerifyTestMain(m)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

type recorder struct {
	mu      sync.Mutex
	msgs    map[string][]string
	offsets []uint64
	gaps    [][]string
	got     chan struct{}
}

func newRecorder() *recorder {
	return &recorder{msgs: make(map[string][]string), got: make(chan struct{}, 1)}
}

func (r *recorder) Deliver(m Message) {
	r.mu.Lock()
	r.msgs[m.Room] = append(r.msgs[m.Room], string(m.Data))
	r.offsets = append(r.offsets, m.Offset)
	r.mu.Unlock()
	select {
	case r.got <- struct{}{}:
	default:
	}
}

func (r *recorder) Resync(rooms []string) {
	r.mu.Lock()
	r.gaps = append(r.gaps, rooms)
	r.mu.Unlock()
}

func (r *recorder) count(room string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs[room])
}

func (r *recorder) waitCount(t testing.TB, room string, n int) []string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for r.count(room) < n {
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("room %s: got %d messages, want %d", room, r.count(room), n)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs[room]...)
}

// runBroker starts a broker for addr and runs it until the test ends.
func runBroker(tb testing.TB, addr, node, prefix string, sink Sink, tweak ...func(*RedisConfig)) *Redis {
	tb.Helper()
	cfg := RedisConfig{URL: "redis://" + addr, NodeID: node, Prefix: prefix, ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second}
	for _, f := range tweak {
		f(&cfg)
	}
	b, err := NewRedis(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := b.Run(ctx, sink); err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
		b.Close()
	})
	if !hubtest.Poll(10*time.Second, func() bool { return b.Ready() == nil }) {
		tb.Fatalf("broker not ready: %v", b.Ready())
	}
	return b
}

func TestRedisDeliversBetweenBrokers(t *testing.T) {
	addr := hubtest.RedisServer(t)
	ra, rb := newRecorder(), newRecorder()
	a := runBroker(t, addr, "a", "p:", ra)
	b := runBroker(t, addr, "b", "p:", rb)
	b.Subscribe("room")
	ctx := context.Background()
	if err := b.WaitSubscribed(ctx, "room"); err != nil {
		t.Fatal(err)
	}
	if _, err := publish(a, "room", []byte("hello"), ""); err != nil {
		t.Fatal(err)
	}
	if got := rb.waitCount(t, "room", 1); got[0] != "hello" {
		t.Fatalf("got %q, want hello", got)
	}
	if got := ra.count("room"); got != 0 {
		t.Fatalf("a is not subscribed but got %d messages", got)
	}
	if err := a.WaitSubscribed(ctx, "other"); err == nil {
		t.Fatal("WaitSubscribed on a room never subscribed: got nil error")
	}
}

// Interest that flips quickly ends in the right state, and a subscribe is only
// confirmed by its own SUBSCRIBE.
func TestRedisInterestChurn(t *testing.T) {
	addr := hubtest.RedisServer(t)
	b := runBroker(t, addr, "a", "churn:", newRecorder())
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	ctx := context.Background()
	numsub := func(room string) int64 {
		ch := "churn:{" + room + "}"
		res, err := rc.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return res[ch]
	}
	for i := range 200 {
		room := "r" + strconv.Itoa(i%7)
		b.Subscribe(room)
		if i%3 == 0 {
			b.Unsubscribe(room)
		}
	}
	for i := range 7 {
		room := "r" + strconv.Itoa(i)
		b.Subscribe(room)
		if err := b.WaitSubscribed(ctx, room); err != nil {
			t.Fatal(err)
		}
		if got := numsub(room); got != 1 {
			t.Fatalf("%s: got %d subscribers after its subscribe was confirmed, want 1", room, got)
		}
		b.Unsubscribe(room)
	}
	if !hubtest.Poll(10*time.Second, func() bool { return b.Subscriptions() == 0 && numsub("r0") == 0 }) {
		t.Fatalf("after unsubscribing all: %d rooms, r0 has %d subscribers; want 0, 0", b.Subscriptions(), numsub("r0"))
	}
}

// Concurrent publishers share round trips and each keeps its order.
func TestRedisPublishBatchingKeepsPublisherOrder(t *testing.T) {
	addr := hubtest.RedisServer(t)
	rec := newRecorder()
	pub := runBroker(t, addr, "pub", "order:", newRecorder())
	sub := runBroker(t, addr, "sub", "order:", rec)
	sub.Subscribe("r")
	ctx := context.Background()
	if err := sub.WaitSubscribed(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	const publishers, msgs = 16, 500
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range msgs {
				if _, err := publish(pub, "r", fmt.Appendf(nil, "%d:%d", p, i), ""); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := rec.waitCount(t, "r", publishers*msgs)
	next := make([]int, publishers)
	for _, m := range got {
		ps, is, _ := strings.Cut(m, ":")
		p, _ := strconv.Atoi(ps)
		i, _ := strconv.Atoi(is)
		if i != next[p] {
			t.Fatalf("publisher %d: got message %d, want %d", p, i, next[p])
		}
		next[p]++
	}
	// Every publish went out in exactly one round trip, and concurrent
	// publishers shared round trips.
	trips, published := histogramSamples(t, pub.metrics.batchSize)
	if published != publishers*msgs {
		t.Fatalf("publish batch sizes add up to %v, want %d (each publish in one batch)", published, publishers*msgs)
	}
	if mean := published / float64(trips); trips == 0 || mean <= 1 {
		t.Fatalf("%v publishes from %d concurrent publishers went out in %d round trips (mean batch %.2f), want a mean batch above 1",
			published, publishers, trips, mean)
	}
}

// histogramSamples returns how many observations h holds and their sum.
func histogramSamples(t testing.TB, h prometheus.Histogram) (count uint64, sum float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatalf("read histogram: %v", err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

func TestRedisNotReadyBeforeRunAndPublishBounded(t *testing.T) {
	b, err := NewRedis(RedisConfig{URL: "redis://127.0.0.1:1", NodeID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Ready() == nil {
		t.Fatal("Ready before Run: got nil, want an error")
	}
	if _, err := publish(b, "r", []byte("x"), ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish before the subscription is proven: got %v, want ErrUnavailable", err)
	}
}

func TestNewRedisRejectsBadURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1", "redis://:secret@127.0.0.1:6379/notadb"} {
		_, err := NewRedis(RedisConfig{URL: u, NodeID: "x"})
		if err == nil {
			t.Errorf("NewRedis(%q): got nil error", u)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("NewRedis(%q): error %q shows the password", u, err)
		}
	}
}

// BenchmarkRedisPublish compares publishes/s to Redis with pipelining and
// without, for 64 concurrent publishers.
func BenchmarkRedisPublish(b *testing.B) {
	addr := hubtest.RedisServer(b)
	for _, batching := range []bool{false, true} {
		b.Run(fmt.Sprintf("batching=%v", batching), func(b *testing.B) {
			pub := runBroker(b, addr, "bench", "bench:", newRecorder(), func(c *RedisConfig) { c.NoBatching = !batching })
			payload := []byte(`{"type":"message","room":"r","data":"` + strings.Repeat("x", 100) + `"}`)
			b.SetParallelism(32) // 64 publishers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := publish(pub, "r", payload, ""); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
		})
	}
}

// publish publishes through b and waits for the outcome.
func publish(b Broker, room string, data []byte, key string) (Receipt, error) {
	type out struct {
		rc  Receipt
		err error
	}
	ch := make(chan out, 1)
	b.Publish(Publication{Room: room, Data: data, IdempotencyKey: key}, func(rc Receipt, err error) { ch <- out{rc, err} })
	o := <-ch
	return o.rc, o.err
}
