package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	hubclient "github.com/hubcluster/hubcluster/client"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// History and recovery (protocol v1.1): within the history window a member
// gets every message of its room exactly once, in offset order, across node
// drains and crashes, Redis reconnects and its own reconnects; beyond it, a
// gap. These tests use the Go client, which resubscribes with since by
// itself.

// tracker is a member that keeps everything its room delivered.
type tracker struct {
	t    *testing.T
	c    *hubclient.Client
	mu   sync.Mutex
	data []int    // message data, in arrival order
	offs []uint64 // their offsets
	gaps int
	recs []bool // OnRecovered's ok, in order
	ups  int    // times the client (re)connected
}

func track(t *testing.T, room string, urls ...string) *tracker {
	t.Helper()
	tr := &tracker{t: t}
	opts := &hubclient.Options{
		URLs:       urls[1:],
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		OnGap: func(string) { tr.mu.Lock(); tr.gaps++; tr.mu.Unlock() },
		OnRecovered: func(_ string, _ int, ok bool) {
			tr.mu.Lock()
			tr.recs = append(tr.recs, ok)
			tr.mu.Unlock()
		},
		OnState: func(s hubclient.State, _ int, _ string) {
			if s == hubclient.Connected {
				tr.mu.Lock()
				tr.ups++
				tr.mu.Unlock()
			}
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := hubclient.Dial(ctx, urls[0], opts)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	tr.c = c
	if _, err := c.Subscribe(ctx, room, func(m hubclient.Message) {
		var i int
		json.Unmarshal(m.Data, &i)
		tr.mu.Lock()
		tr.data = append(tr.data, i)
		tr.offs = append(tr.offs, m.Offset)
		tr.mu.Unlock()
	}); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return tr
}

func (tr *tracker) count() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.data)
}

// check asserts that the tracker got messages first..last exactly once, in
// order, with offsets one apart, and says what it saw otherwise.
func (tr *tracker) check(name string, first, last int) {
	tr.t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	seen := map[int]int{}
	for _, d := range tr.data {
		seen[d]++
	}
	var missing, dups []int
	for i := first; i <= last; i++ {
		switch seen[i] {
		case 0:
			missing = append(missing, i)
		case 1:
		default:
			dups = append(dups, i)
		}
	}
	if len(missing) > 0 || len(dups) > 0 {
		tr.t.Errorf("%s: %d missing %v, %d twice %v (of %d..%d)", name, len(missing), head(missing), len(dups), head(dups), first, last)
		return
	}
	for k := 1; k < len(tr.offs); k++ {
		if tr.offs[k] != tr.offs[k-1]+1 || tr.data[k] <= tr.data[k-1] {
			tr.t.Errorf("%s: message %d (offset %d) came after %d (offset %d): not in offset order", name,
				tr.data[k], tr.offs[k], tr.data[k-1], tr.offs[k-1])
			return
		}
	}
}

func head(s []int) []int { return s[:min(len(s), 10)] }

// publisher publishes 0, 1, 2, ... to room at rate per second through the Go
// client until stopped; every number is retried with its key until acked, so
// each one is published exactly once whatever fails in between.
type publisher struct {
	next atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func publish(t *testing.T, room string, rate int, urls ...string) *publisher {
	t.Helper()
	ctx := context.Background()
	c, err := hubclient.Dial(ctx, urls[0], &hubclient.Options{URLs: urls[1:], MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		QueueTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer c.Close()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			key := fmt.Sprintf("%s-%d", room, i)
			for attempt := 0; ; attempt++ {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := c.Publish(pctx, room, i, &hubclient.PublishOptions{IdempotencyKey: key})
				cancel()
				if err == nil {
					break
				}
				if attempt == 100 {
					t.Errorf("publish %d: %v", i, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			p.next.Store(int64(i + 1))
		}
	}()
	return p
}

// halt stops publishing and returns the last number published.
func (p *publisher) halt() int {
	close(p.stop)
	<-p.done
	return int(p.next.Load()) - 1
}

func (c *cluster) urls() []string {
	var u []string
	for _, n := range c.nodes {
		u = append(u, "ws://"+n.addr+"/ws")
	}
	return u
}

// settle waits until every tracker has at least n messages.
func settle(t *testing.T, trs []*tracker, n int) {
	t.Helper()
	eventually(t, 30*time.Second, func() bool {
		for _, tr := range trs {
			if tr.count() < n {
				return false
			}
		}
		return true
	}, fmt.Sprintf("every member to have %d messages", n))
	time.Sleep(300 * time.Millisecond) // anything doubled would show now
}

// A node drained under load: its members reconnect to the other node with
// their offsets and miss nothing (the drain drops the node's Redis
// subscriptions before it closes its clients: what is published in between
// is recovered too); a node killed under load, the same.
func TestDrainAndKillLoseNothing(t *testing.T) {
	for _, how := range []string{"drain", "kill"} {
		t.Run(how, func(t *testing.T) {
			c := startCluster(t, 2, "HUB_DRAIN_DELAY=300ms", "HUB_RECONNECT_WINDOW=1s")
			a, b := c.nodes[0], c.nodes[1]
			ua, ub := "ws://"+a.addr+"/ws", "ws://"+b.addr+"/ws"
			var trs []*tracker
			for range 20 {
				trs = append(trs, track(t, "deploy", ua, ub)) // on A; B when A goes
			}
			for range 5 {
				trs = append(trs, track(t, "deploy", ub))
			}
			p := publish(t, "deploy", 50, ub)
			time.Sleep(time.Second)
			if how == "drain" {
				a.signal(syscall.SIGTERM)
			} else {
				a.signal(syscall.SIGKILL)
			}
			a.wait(30 * time.Second)
			time.Sleep(2 * time.Second)
			last := p.halt()
			settle(t, trs, last+1)
			gaps := 0
			for i, tr := range trs {
				tr.check(fmt.Sprintf("member %d", i), 0, last)
				gaps += tr.gaps
			}
			if gaps != 0 {
				t.Errorf("%d gaps told, want none (everything was in the history)", gaps)
			}
			t.Logf("%s of a node: %d messages, 25 members (20 moved), every one exactly once in order", how, last+1)
		})
	}
}

// The node's own Redis subscription breaks and comes back: killed by Redis,
// gone silent, or Redis restarted with its data kept (AOF). Members get
// every message exactly once, in order, and no gap: the node reads what it
// missed back from the history.
func TestSubscriptionLossIsFilledFromHistory(t *testing.T) {
	for _, how := range []string{"client-kill", "silent", "restart-aof"} {
		t.Run(how, func(t *testing.T) {
			var r *redisServer
			if how == "restart-aof" {
				r = startRedisWith(t, "--appendonly", "yes", "--appendfsync", "always", "--save", "")
			} else {
				r = startRedis(t)
			}
			c := &cluster{redis: r, proxy: newProxy(t, r.addr), prefix: uniquePrefix()}
			for i := range 2 {
				c.nodes = append(c.nodes, c.startNode(t, fmt.Sprintf("node-%c", 'a'+i)))
			}
			for _, n := range c.nodes {
				n.waitReady(30 * time.Second)
			}
			ua, ub := c.urls()[0], c.urls()[1]
			trs := []*tracker{track(t, "loss", ua), track(t, "loss", ua), track(t, "loss", ub)}
			p := publish(t, "loss", 50, ub, ua)
			time.Sleep(time.Second)
			switch how {
			case "client-kill":
				if err := r.client(t).ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err(); err != nil {
					t.Fatal(err)
				}
			case "silent":
				c.proxy.silence()
			case "restart-aof":
				r.stop(t)
				c.proxy.cut()
				time.Sleep(time.Second)
				r.start(t)
				c.proxy.setUpstream(r.addr)
			}
			for _, n := range c.nodes {
				n.waitReady(30 * time.Second)
			}
			time.Sleep(2 * time.Second)
			last := p.halt()
			settle(t, trs, last+1)
			for i, tr := range trs {
				tr.check(fmt.Sprintf("member %d", i), 0, last)
				if tr.gaps != 0 {
					t.Errorf("member %d: %d gaps, want none", i, tr.gaps)
				}
			}
			fills := 0.0
			for _, n := range c.nodes {
				fills += n.metric("hub_history_fills_total")
			}
			t.Logf("%s: %d messages, every member exactly once in order, no gap; %v history fills", how, last+1, fills)
		})
	}
}

// Redis restarted without persistence: its history is gone, the epoch
// changes. A member that recovers is told recovered: false and gap, never
// handed a wrong replay; the live members are told gap too; everyone gets
// the new messages.
func TestRedisWithoutPersistenceTellsGap(t *testing.T) {
	r := startRedisWith(t, "--appendonly", "no", "--save", "")
	c := &cluster{redis: r, proxy: newProxy(t, r.addr), prefix: uniquePrefix()}
	n := c.startNode(t, "node-a")
	n.waitReady(30 * time.Second)
	url := "ws://" + n.addr + "/ws"
	live := track(t, "lost", url)
	p := publish(t, "lost", 50, url)
	time.Sleep(time.Second)
	r.stop(t)
	c.proxy.cut()
	r.start(t)
	c.proxy.setUpstream(r.addr)
	n.waitReady(30 * time.Second)
	time.Sleep(time.Second)
	last := p.halt()
	eventually(t, 20*time.Second, func() bool {
		live.mu.Lock()
		defer live.mu.Unlock()
		return live.gaps > 0 && len(live.data) > 0 && live.data[len(live.data)-1] == last
	}, "the live member to be told the gap and get the newest message")
	// A client that recovers from a place in the old history.
	late := dialNode(t, n)
	late.Send(`{"type":"subscribe","room":"lost","id":"s","since":{"offset":3,"epoch":"an-old-epoch"}}`)
	if m := late.NextOfType("gap", 10*time.Second); m["room"] != "lost" {
		t.Fatalf("got %v, want a gap", m)
	}
	ack := late.NextOfType("ack", 10*time.Second)
	if ack["recovered"] != false || ack["epoch"] == "an-old-epoch" {
		t.Fatalf("got ack %v, want recovered false with the new epoch", ack)
	}
}

// More missed than the history keeps: gap and recovered false; every live
// message afterwards.
func TestRecoveryPastTheWindowTellsGap(t *testing.T) {
	c := startCluster(t, 1, "HUB_HISTORY_SIZE=10")
	n := c.nodes[0]
	first := dialNode(t, n)
	first.Send(`{"type":"subscribe","room":"w","id":1}`)
	ack := first.NextOfType("ack", 10*time.Second)
	epoch := ack["epoch"].(string)
	for i := range 25 {
		if code := n.publishHTTP("w", i); code != 202 {
			t.Fatalf("publish: %d", code)
		}
	}
	late := dialNode(t, n)
	late.Send(`{"type":"subscribe","room":"w","id":"s","since":{"offset":2,"epoch":%q}}`, epoch)
	if m := late.Next(10 * time.Second); m["type"] != "gap" {
		t.Fatalf("got %v, want a gap first (offsets 3..15 are gone)", m)
	}
	ack = late.Next(10 * time.Second)
	if ack["type"] != "ack" || ack["recovered"] != false || ack["offset"] != 25.0 {
		t.Fatalf("got %v, want the ack: recovered false at offset 25", ack)
	}
	if code := n.publishHTTP("w", "after"); code != 202 {
		t.Fatal(code)
	}
	if m := late.Next(10 * time.Second); m["data"] != "after" || m["offset"] != 26.0 {
		t.Fatalf("got %v, want the next live message at offset 26", m)
	}
	// Within the window it recovers, and says so.
	ok := dialNode(t, n)
	ok.Send(`{"type":"subscribe","room":"w","id":"s","since":{"offset":20,"epoch":%q}}`, epoch)
	for off := 21; off <= 26; off++ {
		if m := ok.Next(10 * time.Second); m["type"] != "message" || m["offset"] != float64(off) {
			t.Fatalf("got %v, want the message at offset %d", m, off)
		}
	}
	if ack := ok.Next(10 * time.Second); ack["recovered"] != true || ack["offset"] != 26.0 {
		t.Fatalf("got %v, want recovered true at 26", ack)
	}
}

// A thousand clients recover the same room at once (a drained node's whole
// population): every one complete, and the history reads to Redis do not
// multiply with them.
func TestThousandRecoveriesShareReads(t *testing.T) {
	c := startCluster(t, 1, "HUB_MAX_CONNECTIONS_PER_IP=0")
	n := c.nodes[0]
	first := dialNode(t, n)
	first.Send(`{"type":"subscribe","room":"crowd","id":1}`)
	epoch := first.NextOfType("ack", 10*time.Second)["epoch"].(string)
	for i := range 50 {
		n.publishHTTP("crowd", i)
	}
	rc := c.redis.client(t)
	ctx := context.Background()
	before := evalshaCalls(t, rc)
	readsBefore := n.metric("hub_redis_history_reads_total")
	const clients = 1000
	var wg sync.WaitGroup
	var complete atomic.Int64
	sem := make(chan struct{}, 200)
	for range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cl, _, err := hubtest.TryDial(t, n.wsURL(), nil)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			if cl.TrySend(`{"type":"subscribe","room":"crowd","id":"s","since":{"offset":10,"epoch":%q}}`, epoch) != nil {
				return
			}
			for want := 11; want <= 50; want++ {
				m, err := cl.TryNext(20 * time.Second)
				if err != nil || m["type"] != "message" || m["offset"] != float64(want) {
					t.Errorf("recovering client: got %v (%v), want offset %d", m, err, want)
					return
				}
			}
			if m, err := cl.TryNext(20 * time.Second); err == nil && m["recovered"] == true {
				complete.Add(1)
			}
			cl.CloseNow()
		})
	}
	wg.Wait()
	reads := n.metric("hub_redis_history_reads_total") - readsBefore
	scripts := evalshaCalls(t, rc) - before
	t.Logf("%d clients recovered 40 messages each from one room: %v history reads by the node, %d EVALSHA calls in Redis (%.3f per client)",
		complete.Load(), reads, scripts, float64(scripts)/clients)
	_ = ctx
	if complete.Load() != clients {
		t.Errorf("%d of %d clients recovered completely", complete.Load(), clients)
	}
	if reads > 10 {
		t.Errorf("%v history reads for %d clients recovering one room, want a handful (shared)", reads, clients)
	}
}

// startRedisWith runs a Redis container with these server arguments.
func startRedisWith(t *testing.T, args ...string) *redisServer {
	t.Helper()
	ctx := context.Background()
	ctr, err := testcontainers.Run(ctx, redisImage(),
		testcontainers.WithExposedPorts("6379/tcp"),
		testcontainers.WithCmd(append([]string{"redis-server"}, args...)...),
		testcontainers.WithWaitStrategy(wait.ForListeningPort("6379/tcp").WithStartupTimeout(60*time.Second)),
	)
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start redis container from %s: %v", redisImage(), err)
	}
	r := &redisServer{ctr: ctr}
	r.refreshAddr(t)
	return r
}

// evalshaCalls is how many scripts Redis has run (INFO commandstats).
func evalshaCalls(t *testing.T, rc *redis.Client) int {
	t.Helper()
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		for _, cmd := range []string{"cmdstat_evalsha:", "cmdstat_eval:"} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), cmd); ok {
				calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
				k, _ := strconv.Atoi(calls)
				n += k
			}
		}
	}
	return n
}
