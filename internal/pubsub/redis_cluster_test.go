package pubsub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// runClusterBroker starts a cluster-mode broker for the cluster at seeds and
// runs it until the test ends.
func runClusterBroker(tb testing.TB, seeds []string, node, prefix string, sink Sink, tweak ...func(*RedisConfig)) *Redis {
	tb.Helper()
	return runBrokerWith(tb, RedisConfig{Cluster: seeds, NodeID: node, Prefix: prefix,
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second, Registerer: prometheus.NewRegistry()}, sink, tweak...)
}

// debugLogger, with PUBSUB_DEBUG set, shows the brokers' logs of a test.
var debugLogger = func() *slog.Logger {
	if os.Getenv("PUBSUB_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}()

func runBrokerWith(tb testing.TB, cfg RedisConfig, sink Sink, tweak ...func(*RedisConfig)) *Redis {
	tb.Helper()
	if debugLogger != nil {
		cfg.Logger = debugLogger.With("broker", cfg.NodeID)
	}
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
	if !hubtest.Poll(20*time.Second, func() bool { return b.Ready() == nil }) {
		tb.Fatalf("broker not ready: %v", b.Ready())
	}
	return b
}

func withHistory(n int) func(*RedisConfig) { return func(c *RedisConfig) { c.HistorySize = n } }

// nodeClients returns a client for every node of a cluster, closed when the
// test ends.
func nodeClients(t *testing.T, addrs []string) []*redis.Client {
	t.Helper()
	var cs []*redis.Client
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

// owner returns the index of the node of a cluster that StartRedisCluster
// made (slots split evenly, in order) serving channel.
func owner(channel string, n int) int {
	s := int(slot(channel))
	for i := range n {
		if s <= (i+1)*16384/n-1 {
			return i
		}
	}
	return n - 1
}

func TestSlotMatchesRedis(t *testing.T) {
	c := nodeClients(t, hubtest.RedisCluster(t, 1))[0]
	for _, key := range []string{"", "foo", "123456789", "{b}", "a{x}", "{}x", "a{}{b}", "x{y}z{w}", "hub:{room.1:a-b}", "{{x}}", "p:!probe{17}:n-1a2b"} {
		want, err := c.Do(context.Background(), "cluster", "keyslot", key).Int()
		if err != nil {
			t.Fatal(err)
		}
		if got := slot(key); int(got) != want {
			t.Errorf("slot(%q): got %d, want %d (CLUSTER KEYSLOT)", key, got, want)
		}
	}
}

// Rooms spread over three shards: each is subscribed, with SSUBSCRIBE, on the
// primary that owns its slot and nowhere else; messages arrive once and in
// order; every shard's connection is probed and counted on its own.
func TestClusterRoomsLiveOnTheirShards(t *testing.T) {
	addrs := hubtest.RedisCluster(t, 3)
	nodes := nodeClients(t, addrs)
	ra, rb := newRecorder(), newRecorder()
	a := runClusterBroker(t, addrs, "a", "cs:", ra)
	b := runClusterBroker(t, addrs, "b", "cs:", rb)
	const rooms, msgs = 60, 5
	perShard := make([]int, len(addrs))
	for i := range rooms {
		room := "r" + strconv.Itoa(i)
		perShard[owner(b.channel(room), len(addrs))]++
		b.Subscribe(room)
	}
	for i, n := range perShard {
		if n == 0 {
			t.Fatalf("no room on shard %d: the test needs rooms on every shard", i)
		}
	}
	ctx := context.Background()
	for i := range rooms {
		if err := b.WaitSubscribed(ctx, "r"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range rooms {
		for k := range msgs {
			if _, err := publish(a, "r"+strconv.Itoa(i), []byte(strconv.Itoa(k)), ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range rooms {
		room := "r" + strconv.Itoa(i)
		got := rb.waitCount(t, room, msgs)
		if want := []string{"0", "1", "2", "3", "4"}; !slices.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", room, got, want)
		}
		if n := ra.count(room); n != 0 {
			t.Errorf("%s: the broker not subscribed got %d messages", room, n)
		}
	}
	// Each primary counts one subscriber on the rooms it owns, none on the others.
	for k, c := range nodes {
		for i := range rooms {
			ch := b.channel("r" + strconv.Itoa(i))
			want := int64(0)
			if owner(ch, len(addrs)) == k {
				want = 1
			}
			res, err := c.Do(ctx, "pubsub", "shardnumsub", ch).Slice()
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := res[1].(int64); got != want {
				t.Errorf("PUBSUB SHARDNUMSUB %s on %s: got %d, want %d", ch, addrs[k], got, want)
			}
		}
	}
	for k, addr := range addrs {
		if got := testutil.ToFloat64(b.metrics.shardReady.WithLabelValues(addr)); got != 1 {
			t.Errorf("hub_redis_shard_ready{shard=%q}: got %v, want 1", addr, got)
		}
		if got := testutil.ToFloat64(b.metrics.shardSubscriptions.WithLabelValues(addr)); got != float64(perShard[k]) {
			t.Errorf("hub_redis_shard_subscriptions{shard=%q}: got %v, want %d", addr, got, perShard[k])
		}
		if got := testutil.ToFloat64(a.metrics.shardPublishes.WithLabelValues(addr, "ok")); got != float64(perShard[k]*msgs) {
			t.Errorf("hub_redis_shard_publishes_total{shard=%q,outcome=ok}: got %v, want %d", addr, got, perShard[k]*msgs)
		}
	}
	// The brokers' probes reach every primary (one channel each, per node).
	for k, c := range nodes {
		chans, err := c.Do(ctx, "pubsub", "shardchannels", "cs:!probe*").StringSlice()
		if err != nil {
			t.Fatal(err)
		}
		if len(chans) != 2 {
			t.Errorf("probe channels on %s: got %q, want one of each broker", addrs[k], chans)
		}
	}
	for i := range rooms {
		b.Unsubscribe("r" + strconv.Itoa(i))
	}
	if !hubtest.Poll(10*time.Second, func() bool { return b.Subscriptions() == 0 }) {
		t.Fatalf("after unsubscribing all: %d rooms left", b.Subscriptions())
	}
	for k, c := range nodes {
		if got := numSubs(t, c, b.channel("r0")); got != 0 {
			t.Errorf("after unsubscribing: %s counts %d subscribers of r0", addrs[k], got)
		}
	}
}

func numSubs(t *testing.T, c *redis.Client, ch string) int64 {
	t.Helper()
	res, err := c.Do(context.Background(), "pubsub", "shardnumsub", ch).Slice()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := res[1].(int64)
	return n
}

// migrateSlot moves a slot from one node to another by hand, as redis-cli
// --cluster reshard does: IMPORTING, MIGRATING, the keys, then the owner.
func migrateSlot(t *testing.T, nodes []*redis.Client, addrs []string, s, from, to int) {
	t.Helper()
	ctx := context.Background()
	id := func(i int) string {
		v, err := nodes[i].Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	src, dst := id(from), id(to)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(nodes[to].Do(ctx, "cluster", "setslot", s, "importing", src).Err())
	must(nodes[from].Do(ctx, "cluster", "setslot", s, "migrating", dst).Err())
	host, port, _ := net.SplitHostPort(addrs[to])
	for {
		keys, err := nodes[from].ClusterGetKeysInSlot(ctx, s, 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(nodes[from].Do(ctx, args...).Err())
	}
	must(nodes[to].Do(ctx, "cluster", "setslot", s, "node", dst).Err())
	must(nodes[from].Do(ctx, "cluster", "setslot", s, "node", dst).Err())
	for i := range nodes {
		if i != from && i != to {
			must(nodes[i].Do(ctx, "cluster", "setslot", s, "node", dst).Err())
		}
	}
}

// A room's slot moves to another primary while it is being published to:
// Redis ends the subscription at the old owner, the broker subscribes at the
// new one and reports the room to Resync, and delivery goes on; every
// message is delivered live or kept in the history the Resync reads.
func TestClusterFollowsAMigratedSlot(t *testing.T) {
	addrs := hubtest.RedisCluster(t, 3)
	nodes := nodeClients(t, addrs)
	rec := newRecorder()
	pub := runClusterBroker(t, addrs, "pub", "mig:", newRecorder(), withHistory(1000))
	sub := runClusterBroker(t, addrs, "sub", "mig:", rec, withHistory(1000))
	const room = "moving"
	sub.Subscribe(room)
	ctx := context.Background()
	if err := sub.WaitSubscribed(ctx, room); err != nil {
		t.Fatal(err)
	}
	ch := sub.channel(room)
	from := owner(ch, len(addrs))
	to := (from + 1) % len(addrs)

	stop := make(chan struct{})
	published := make(chan int, 1)
	retries := 0
	go func() {
		i := 0
		defer func() { published <- i }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			key := "k" + strconv.Itoa(i)
			for {
				_, err := publish(pub, room, []byte(strconv.Itoa(i)), key)
				if err == nil {
					break
				}
				if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrUncertain) {
					t.Errorf("publish %d: %v", i, err)
					return
				}
				retries++ // a slot in migration refuses the script (TRYAGAIN): retry it with its key
				time.Sleep(5 * time.Millisecond)
			}
			i++
		}
	}()
	hubtest.Eventually(t, 10*time.Second, func() bool { return rec.count(room) >= 50 }, "messages before the migration")
	migrateSlot(t, nodes, addrs, int(slot(ch)), from, to)
	hubtest.Eventually(t, 20*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.gaps) > 0
	}, "the room to be reported for Resync after its slot moved")
	if got := numSubs(t, nodes[to], ch); got != 1 {
		t.Errorf("PUBSUB SHARDNUMSUB at the new owner: got %d, want 1", got)
	}
	if got := numSubs(t, nodes[from], ch); got != 0 {
		t.Errorf("PUBSUB SHARDNUMSUB at the old owner: got %d, want 0", got)
	}
	before := rec.count(room)
	hubtest.Eventually(t, 10*time.Second, func() bool { return rec.count(room) >= before+50 }, "messages after the migration")
	close(stop)
	n := <-published

	h, err := sub.History(ctx, room, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	live := append([]string(nil), rec.msgs[room]...)
	rec.mu.Unlock()
	have := map[string]bool{}
	for _, m := range live {
		have[m] = true
	}
	missedLive := 0
	for _, m := range h.Messages {
		if !have[string(m.Data)] {
			missedLive++
			have[string(m.Data)] = true
		}
	}
	for i := range n {
		if !have[strconv.Itoa(i)] {
			t.Errorf("message %d: neither delivered nor in the history", i)
		}
	}
	if len(h.Messages) != n || h.Top != uint64(n) {
		t.Errorf("history: got %d messages up to offset %d, want %d (each published once)", len(h.Messages), h.Top, n)
	}
	t.Logf("slot %d moved from %s to %s under %d publishes: %d missed live (in the history for the Resync), %d publishes refused during the move and retried",
		slot(ch), addrs[from], addrs[to], n, missedLive, retries)
}

// A primary that goes away makes the broker not ready, naming that shard;
// the rooms on the other shards keep working.
func TestClusterReadyNamesTheShardThatIsDown(t *testing.T) {
	addrs := hubtest.RedisCluster(t, 3)
	nodes := nodeClients(t, addrs)
	rec := newRecorder()
	b := runClusterBroker(t, addrs, "b", "down:", rec)
	// A room on shard 0, which stays.
	room := ""
	for i := 0; room == ""; i++ {
		if owner(b.channel("s"+strconv.Itoa(i)), len(addrs)) == 0 {
			room = "s" + strconv.Itoa(i)
		}
	}
	b.Subscribe(room)
	if err := b.WaitSubscribed(context.Background(), room); err != nil {
		t.Fatal(err)
	}
	nodes[2].Shutdown(context.Background()) // the reply never comes: it exits
	var err error
	if !hubtest.Poll(20*time.Second, func() bool { err = b.Ready(); return err != nil }) {
		t.Fatal("a primary went away: the broker stayed ready")
	}
	if !strings.Contains(err.Error(), addrs[2]) {
		t.Errorf("Ready: got %q, want it to name the shard %s", err, addrs[2])
	}
	if _, err := publish(b, room, []byte("still"), ""); err != nil {
		t.Fatalf("publish to a room on a shard that is up: %v", err)
	}
	if got := rec.waitCount(t, room, 1); got[0] != "still" {
		t.Fatalf("got %q, want the message", got)
	}
	t.Logf("not ready: %v", err)
}

// cutter is a TCP proxy on loopback whose connections can all be cut at
// once.
type cutter struct {
	ln     net.Listener
	to     string
	marker []byte        // when a client sends these bytes,
	seen   chan struct{} // seen is closed
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newCutter(t *testing.T) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, seen: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		c.cut()
		c.wg.Wait()
	})
	return c
}

func (c *cutter) port() string { _, p, _ := net.SplitHostPort(c.ln.Addr().String()); return p }

func (c *cutter) serve(to string) {
	c.to = to
	c.wg.Go(func() {
		for {
			down, err := c.ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", c.to)
			if err != nil {
				down.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, down, up)
			c.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				defer dst.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
						if c.marker != nil && dst == up && bytes.Contains(buf[:n], c.marker) {
							c.mu.Lock()
							select {
							case <-c.seen:
							default:
								close(c.seen)
							}
							c.mu.Unlock()
						}
					}
					if err != nil {
						return
					}
				}
			}
			c.wg.Go(func() { pipe(up, down) })
			c.wg.Go(func() { pipe(down, up) })
		}
	})
}

// cut closes every connection made so far.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// A publication is sent once: when the connection breaks after the command
// went out and before its answer came back, the publish ends uncertain and
// go-redis does not send it again on a new connection (Redis runs every
// copy it received: the message would be stored and delivered twice).
func TestClusterPublishIsNeverSentTwice(t *testing.T) {
	// The node announces the proxy's port, so every connection goes through it.
	proxy := newCutter(t)
	addrs := hubtest.RedisCluster(t, 1, "--cluster-announce-port", proxy.port())
	proxy.marker = []byte("cut-me") // the publish to cut off
	proxy.serve(addrs[0])
	seed := "127.0.0.1:" + proxy.port()
	direct := nodeClients(t, addrs)[0]
	// Few probes: while Redis is busy they hold connections of the pool.
	b := runClusterBroker(t, []string{seed}, "b", "once:", newRecorder(), withHistory(100), func(c *RedisConfig) {
		c.ProbeInterval, c.ProbeTimeout = time.Second, 8*time.Second
	})
	ctx := context.Background()
	if _, err := publish(b, "r", []byte("first"), ""); err != nil {
		t.Fatal(err)
	}
	// Connections of the command pool are made now: a new one waits for
	// CLIENT SETNAME's answer, which a busy Redis holds back.
	var warm sync.WaitGroup
	for range 8 {
		warm.Go(func() { b.client.Do(ctx, "eval", "return 1", 1, "{r}") })
	}
	warm.Wait()
	// Redis answers a PING within half a second, unless the script runs.
	probe := redis.NewClient(&redis.Options{Addr: addrs[0], ReadTimeout: 500 * time.Millisecond, MaxRetries: -1})
	defer probe.Close()
	if err := probe.Ping(ctx).Err(); err != nil {
		t.Fatal(err) // the connection is made before the script starts
	}
	// A script keeps Redis busy for 4s: the publish waits in its socket.
	busy := make(chan error, 1)
	go func() {
		busy <- direct.Eval(ctx, `local s = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 4000000 then return 1 end
end`, []string{"{x}"}).Err()
	}()
	hubtest.Eventually(t, 5*time.Second, func() bool {
		return probe.Ping(ctx).Err() != nil
	}, "the script to keep Redis busy")
	done := make(chan error, 1)
	go func() {
		_, err := publish(b, "r", []byte("cut-me"), "")
		done <- err
	}()
	select {
	case <-proxy.seen:
	case <-time.After(5 * time.Second):
		t.Fatal("the publish never reached the proxy")
	}
	time.Sleep(50 * time.Millisecond) // on to Redis
	proxy.cut()
	if err := <-done; !errors.Is(err, ErrUncertain) {
		t.Fatalf("publish whose connection broke before the answer: got %v, want ErrUncertain", err)
	}
	if err := <-busy; err != nil {
		t.Fatal(err)
	}
	hubtest.Eventually(t, 10*time.Second, func() bool {
		_, err := publish(b, "r", []byte("after"), "")
		return err == nil
	}, "publications to work again")
	h, err := b.History(ctx, "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range h.Messages {
		got = append(got, string(m.Data))
	}
	if want := []string{"first", "cut-me", "after"}; !slices.Equal(got, want) {
		t.Fatalf("history: got %q, want %q (the one cut off stored once)", got, want)
	}
}

// After a failover lost a room's last writes, the history stands behind what
// the node saw, and the new primary hands the same offsets out again. When
// the subscription comes back, the broker sees that and starts a new epoch
// before it reports the room to Resync; when the history is whole, it leaves
// it be.
func TestClusterFencesAHistoryThatWentBack(t *testing.T) {
	addrs := hubtest.RedisCluster(t, 1)
	nodes := nodeClients(t, addrs)
	rec := newRecorder()
	b := runClusterBroker(t, addrs, "b", "fence:", rec, withHistory(100))
	ctx := context.Background()
	meta := func(room string) (string, int) {
		v, err := nodes[0].HMGet(ctx, b.metaKey(room), "e", "t").Result()
		if err != nil {
			t.Fatal(err)
		}
		e, _ := v[0].(string)
		top, _ := strconv.Atoi(fmt.Sprint(v[1]))
		return e, top
	}
	kill := func() {
		t.Helper()
		if err := nodes[0].ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitResync := func(n int) {
		t.Helper()
		hubtest.Eventually(t, 20*time.Second, func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			k := 0
			for _, g := range rec.gaps {
				k += len(g)
			}
			return k >= n
		}, "%d rooms reported to Resync", n)
	}
	for _, room := range []string{"whole", "behind", "rewritten"} {
		b.Subscribe(room)
		if err := b.WaitSubscribed(ctx, room); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := publish(b, room, []byte(room+strconv.Itoa(i)), ""); err != nil {
				t.Fatal(err)
			}
		}
		rec.waitCount(t, room, 5)
	}
	epochs := map[string]string{}
	for _, room := range []string{"whole", "behind", "rewritten"} {
		epochs[room], _ = meta(room)
	}
	// "behind": the last two writes lost. "rewritten": the last two lost and
	// two others stored at their offsets, as a new primary would.
	for _, room := range []string{"behind", "rewritten"} {
		kept, err := nodes[0].XRangeN(ctx, b.streamKey(room), "-", "+", 3).Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].Del(ctx, b.streamKey(room)).Err(); err != nil {
			t.Fatal(err)
		}
		for _, m := range kept {
			if err := nodes[0].XAdd(ctx, &redis.XAddArgs{Stream: b.streamKey(room), ID: m.ID, Values: m.Values}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := nodes[0].HSet(ctx, b.metaKey(room), "t", 3).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 3; i < 5; i++ {
		id := strconv.Itoa(i+1) + "-0"
		if err := nodes[0].HIncrBy(ctx, b.metaKey("rewritten"), "t", 1).Err(); err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].XAdd(ctx, &redis.XAddArgs{Stream: b.streamKey("rewritten"), ID: id, Values: []any{"d", "other" + strconv.Itoa(i)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	kill()
	waitResync(3)
	for room, wantNew := range map[string]bool{"whole": false, "behind": true, "rewritten": true} {
		e, _ := meta(room)
		if got := e != epochs[room]; got != wantNew {
			t.Errorf("%s: new epoch %v, want %v", room, got, wantNew)
		}
	}
	if got := testutil.ToFloat64(b.metrics.fences); got != 2 {
		t.Errorf("hub_redis_history_fences_total: got %v, want 2", got)
	}
	rec.mu.Lock()
	var resynced []string
	for _, g := range rec.gaps {
		resynced = append(resynced, g...)
	}
	rec.mu.Unlock()
	slices.Sort(resynced)
	if want := []string{"behind", "rewritten", "whole"}; !slices.Equal(resynced, want) {
		t.Errorf("Resync: got %q, want %q", resynced, want)
	}
}

// The options of every client the broker makes keep go-redis from sending a
// command twice, in every mode.
func TestOptionsNeverRetry(t *testing.T) {
	for _, cfg := range []RedisConfig{
		{URL: "redis://127.0.0.1:1"},
		{Cluster: []string{"127.0.0.1:1"}},
		{Sentinels: []string{"127.0.0.1:1"}, SentinelMaster: "m", Password: "pw"},
	} {
		cfg.NodeID = "x"
		b, err := NewRedis(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var opts []*redis.Options
		switch c := b.client.(type) {
		case *redis.Client:
			opts = append(opts, c.Options())
		case *redis.ClusterClient:
			co := c.Options()
			if co.MaxRetries != -1 || co.MaxRedirects != 3 || co.DialerRetries != 1 || co.PoolSize != 8 {
				t.Errorf("cluster options: MaxRetries %d, MaxRedirects %d, DialerRetries %d, PoolSize %d; want -1, 3, 1, 8",
					co.MaxRetries, co.MaxRedirects, co.DialerRetries, co.PoolSize)
			}
			opts = append(opts, b.subOpts)
		}
		if b.single != nil {
			opts = append(opts, b.single.sub.Options())
		}
		for _, o := range opts {
			// After go-redis's init, 0 retries is "none" (-1 before it).
			if o.MaxRetries > 0 || o.DialerRetries != 1 || !o.ContextTimeoutEnabled || o.ReadTimeout != 3*time.Second {
				t.Errorf("%+v: MaxRetries %d, DialerRetries %d, ContextTimeoutEnabled %v, ReadTimeout %v; want none, 1, true, 3s",
					cfg, o.MaxRetries, o.DialerRetries, o.ContextTimeoutEnabled, o.ReadTimeout)
			}
		}
		if cfg.Password != "" {
			if got := b.single.sub.Options().Password; got != "pw" {
				t.Errorf("sentinel mode: password %q not passed on", got)
			}
		}
		b.Close()
	}
}
