package integration

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
)

// cluster is Redis behind a proxy, and nodes that reach Redis through it.
type cluster struct {
	redis  *redisServer
	proxy  *proxy
	prefix string
	nodes  []*node
}

func startCluster(t *testing.T, nodes int, env ...string) *cluster {
	t.Helper()
	r := startRedis(t)
	c := &cluster{redis: r, proxy: newProxy(t, r.addr), prefix: uniquePrefix()}
	for i := range nodes {
		c.nodes = append(c.nodes, c.startNode(t, fmt.Sprintf("node-%c", 'a'+i), env...))
	}
	for _, n := range c.nodes {
		n.waitReady(30 * time.Second)
	}
	return c
}

func (c *cluster) startNode(t *testing.T, id string, env ...string) *node {
	t.Helper()
	return startNode(t, id, append([]string{
		"HUB_REDIS_URL=redis://" + c.proxy.addr(), "HUB_REDIS_PREFIX=" + c.prefix,
		"HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s",
	}, env...)...)
}

// numsub is how many subscribers Redis counts on room's channel.
func (c *cluster) numsub(t *testing.T, room string) int64 {
	t.Helper()
	ch := c.prefix + "{" + room + "}"
	res, err := c.redis.client(t).PubSubNumSub(context.Background(), ch).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return res[ch]
}

func (c *cluster) waitNumsub(t *testing.T, room string, want int64) {
	t.Helper()
	var got int64
	if !hubtest.Poll(10*time.Second, func() bool { got = c.numsub(t, room); return got == want }) {
		t.Fatalf("PUBSUB NUMSUB %s: got %d, want %d", room, got, want)
	}
}

// bothHistories runs a test of the cluster's basic fan-out with history on
// (the default) and off: with HUB_HISTORY_SIZE=0 these behave as before
// history existed.
func bothHistories(t *testing.T, test func(t *testing.T, history string)) {
	for _, size := range []string{"100", "0"} {
		t.Run("history="+size, func(t *testing.T) { test(t, "HUB_HISTORY_SIZE="+size) })
	}
}

func TestCrossNodeDelivery(t *testing.T) { bothHistories(t, crossNodeDelivery) }

func crossNodeDelivery(t *testing.T, history string) {
	c := startCluster(t, 3, history)
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	onA, onC := dialNode(t, a), dialNode(t, cn)
	onA.Subscribe("news")
	onC.Subscribe("news")

	onC.Send(`{"type":"publish","room":"news","data":{"from":"c"},"id":"p1"}`)
	if m := onA.Next(10 * time.Second); m["type"] != "message" || m["data"].(map[string]any)["from"] != "c" {
		t.Fatalf("client on A: got %v, want the message published on C", m)
	}
	// The publisher, subscribed, gets its own message once, and the ack.
	got := map[string]int{}
	for range 2 {
		got[onC.Next(10 * time.Second)["type"].(string)]++
	}
	if got["message"] != 1 || got["ack"] != 1 {
		t.Fatalf("client on C: got %v, want one message and one ack", got)
	}

	if code := b.publishHTTP("news", "from b"); code != http.StatusAccepted {
		t.Fatalf("POST /v1/publish on B: got %d, want 202", code)
	}
	for _, cl := range []*hubtest.Client{onA, onC} {
		if m := cl.Next(10 * time.Second); m["data"] != "from b" {
			t.Fatalf("got %v, want the message published on B", m)
		}
	}
	// Nothing is delivered twice (no echo through the node's own subscription).
	onA.ExpectNothing(300 * time.Millisecond)
	onC.ExpectNothing(10 * time.Millisecond)
}

// A room spread over three nodes with hundreds of members: every member gets
// every message exactly once, in each publisher's order.
func TestRoomAcrossThreeNodesExactlyOnceInOrder(t *testing.T) {
	bothHistories(t, roomAcrossThreeNodesExactlyOnceInOrder)
}

func roomAcrossThreeNodesExactlyOnceInOrder(t *testing.T, history string) {
	c := startCluster(t, 3, history)
	const perNode, msgs = 100, 100
	var members []*hubtest.Client
	for _, n := range c.nodes {
		for range perNode {
			cl := dialNode(t, n)
			cl.Subscribe("big")
			members = append(members, cl)
		}
	}
	publishers := []*hubtest.Client{dialNode(t, c.nodes[0]), dialNode(t, c.nodes[1]), dialNode(t, c.nodes[2])}
	var wg sync.WaitGroup
	for p, pub := range publishers {
		wg.Go(func() {
			for i := range msgs {
				if err := pub.TrySend(`{"type":"publish","room":"big","data":{"p":%d,"i":%d}}`, p, i); err != nil {
					t.Errorf("publisher %d: %v", p, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for k, m := range members {
		next := make([]int, len(publishers))
		for range len(publishers) * msgs {
			obj := m.NextOfType("message", 30*time.Second)
			d := obj["data"].(map[string]any)
			p, i := int(d["p"].(float64)), int(d["i"].(float64))
			if i != next[p] {
				t.Fatalf("member %d: from publisher %d got message %d, want %d", k, p, i, next[p])
			}
			next[p]++
		}
	}
	for _, m := range members {
		m.ExpectNothing(time.Millisecond)
	}
	members[0].ExpectNothing(200 * time.Millisecond)
}

// A node subscribes to a room's channel only while it has local members.
func TestNodeInterest(t *testing.T) { bothHistories(t, nodeInterest) }

func nodeInterest(t *testing.T, history string) {
	c := startCluster(t, 2, history)
	a1, a2, b1 := dialNode(t, c.nodes[0]), dialNode(t, c.nodes[0]), dialNode(t, c.nodes[1])
	if got := c.numsub(t, "lobby"); got != 0 {
		t.Fatalf("before anyone joined: got %d subscribers, want 0", got)
	}
	a1.Subscribe("lobby")
	a2.Subscribe("lobby")
	b1.Subscribe("lobby")
	c.waitNumsub(t, "lobby", 2) // one per node, not per client
	a1.Send(`{"type":"unsubscribe","room":"lobby","id":1}`)
	a1.Next(10 * time.Second)
	if got := c.numsub(t, "lobby"); got != 2 {
		t.Fatalf("one of two members on A left: got %d subscribers, want 2", got)
	}
	a2.CloseNow() // the last member on A goes away
	c.waitNumsub(t, "lobby", 1)
	b1.Send(`{"type":"unsubscribe","room":"lobby","id":2}`)
	c.waitNumsub(t, "lobby", 0)
}

// Many joins go out in few SUBSCRIBE commands, and every room works.
func TestManyRoomsSubscribe(t *testing.T) { bothHistories(t, manyRoomsSubscribe) }

func manyRoomsSubscribe(t *testing.T, history string) {
	// One client in 2000 rooms, as fast as it can: lift the per-client limits.
	c := startCluster(t, 2, "HUB_MAX_ROOMS_PER_CLIENT=5000", "HUB_CLIENT_RATE=0", history)
	const rooms = 2000
	sub, pub := dialNode(t, c.nodes[0]), dialNode(t, c.nodes[1])
	for i := range rooms {
		sub.Send(`{"type":"subscribe","room":"r%d","id":%d}`, i, i)
	}
	for range rooms {
		if m := sub.Next(30 * time.Second); m["type"] != "ack" {
			t.Fatalf("got %v, want ack", m)
		}
	}
	if got := c.nodes[0].metric("hub_redis_subscriptions"); got != rooms {
		t.Errorf("hub_redis_subscriptions: got %v, want %d", got, rooms)
	}
	for i := range rooms {
		pub.Send(`{"type":"publish","room":"r%d","data":%d}`, i, i)
	}
	seen := make(map[float64]bool)
	for range rooms {
		m := sub.NextOfType("message", 30*time.Second)
		seen[m["data"].(float64)] = true
	}
	if len(seen) != rooms {
		t.Fatalf("got messages from %d rooms, want %d", len(seen), rooms)
	}
}

func TestRedisDownAtStart(t *testing.T) {
	p := newProxy(t, "") // nothing behind it yet
	prefix := uniquePrefix()
	n := startNode(t, "late", "HUB_REDIS_URL=redis://"+p.addr(), "HUB_REDIS_PREFIX="+prefix,
		"HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=1s")
	n.waitStatus(503, 10*time.Second) // the process is up, and says it is not ready
	if code, reason := n.readyStatus(); code != 503 || reason == "" {
		t.Fatalf("/readyz: got %d %q, want 503 with a reason", code, reason)
	}
	if _, _, err := hubtest.TryDial(t, n.wsURL(), nil); err == nil {
		t.Fatal("WebSocket upgrade succeeded on a node without Redis, want 503")
	}
	if code := n.publishHTTP("r", 1); code != http.StatusServiceUnavailable {
		t.Fatalf("POST /v1/publish without Redis: got %d, want 503", code)
	}
	r := startRedis(t)
	p.setUpstream(r.addr)
	took := n.waitReady(30 * time.Second)
	t.Logf("ready %v after Redis appeared", took.Round(time.Millisecond))
	cl := dialNode(t, n)
	cl.Subscribe("r")
}

// Redis restarts mid-traffic, history off (at-most-once): the nodes say
// not-ready, resubscribe, tell the members of affected rooms about the gap,
// and deliver again.
func TestRedisRestart(t *testing.T) {
	c := startCluster(t, 2, "HUB_HISTORY_SIZE=0")
	a, b := dialNode(t, c.nodes[0]), dialNode(t, c.nodes[1])
	a.Subscribe("live")
	b.Subscribe("live")
	b.Send(`{"type":"publish","room":"live","data":"before"}`)
	if m := a.NextOfType("message", 10*time.Second); m["data"] != "before" {
		t.Fatalf("got %v", m)
	}

	c.redis.stop(t)
	c.proxy.cut()
	for _, n := range c.nodes {
		n.waitStatus(503, 10*time.Second)
	}
	b.Send(`{"type":"publish","room":"live","data":"during","id":"d"}`)
	if m := b.NextOfType("error", 15*time.Second); m["code"] != "unavailable" || m["id"] != "d" {
		t.Fatalf("publish while Redis is down: got %v, want error unavailable", m)
	}
	c.redis.start(t)
	c.proxy.setUpstream(c.redis.addr)
	for _, n := range c.nodes {
		n.waitReady(30 * time.Second)
	}
	for _, cl := range []*hubtest.Client{a, b} {
		if m := cl.NextOfType("gap", 10*time.Second); m["room"] != "live" {
			t.Fatalf("got %v, want a gap for room live", m)
		}
	}
	for _, n := range c.nodes {
		if got := n.metric("hub_redis_gaps_total"); got < 1 {
			t.Errorf("node %s: hub_redis_gaps_total got %v, want at least 1", n.id, got)
		}
	}
	c.waitNumsub(t, "live", 2)
	b.Send(`{"type":"publish","room":"live","data":"after"}`)
	if m := a.NextOfType("message", 10*time.Second); m["data"] != "after" {
		t.Fatalf("after the restart: got %v, want the new message", m)
	}
}

// The TCP connection to Redis stays up but carries nothing, history off: the
// self-probe notices, the node reports not-ready and the gap, and makes a new
// connection.
func TestSilentOutage(t *testing.T) {
	c := startCluster(t, 2, "HUB_HISTORY_SIZE=0")
	a, b := dialNode(t, c.nodes[0]), dialNode(t, c.nodes[1])
	a.Subscribe("quiet")
	b.Subscribe("quiet")
	c.proxy.silence()
	// The node notices (it may be ready again within milliseconds: the new
	// connection through the proxy works), tells the gap, and counts it.
	if m := a.NextOfType("gap", 20*time.Second); m["room"] != "quiet" {
		t.Fatalf("got %v, want a gap for room quiet", m)
	}
	if got := c.nodes[0].metric("hub_redis_silent_resets_total"); got < 1 {
		t.Errorf("hub_redis_silent_resets_total: got %v, want at least 1", got)
	}
	c.nodes[0].waitReady(30 * time.Second)
	c.nodes[1].waitReady(30 * time.Second)
	b.Send(`{"type":"publish","room":"quiet","data":"again"}`)
	if m := a.NextOfType("message", 10*time.Second); m["data"] != "again" {
		t.Fatalf("after the outage: got %v, want the new message", m)
	}
}
