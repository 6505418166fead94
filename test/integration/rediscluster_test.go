package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Redis Cluster and Sentinel: the hub on the two deployments that outgrow
// one Redis. Each runs in one container of the Redis image (local/redis:7
// from scripts/docker-env.sh, or redis:7-alpine): several redis-server
// processes on ports published one to one on 127.0.0.1, which they announce,
// so the MOVED replies and Sentinel's answers name addresses the host
// reaches.

// redisGroup is a container running several Redis processes.
type redisGroup struct {
	ctr   *testcontainers.DockerContainer
	ports []string
	pids  string // the folder of their pid files
}

// hostPorts returns n distinct free ports of 127.0.0.1, low enough that a
// cluster bus port (10000 higher) exists.
func hostPorts(t *testing.T, n int) []string {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []string
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		if p := ln.Addr().(*net.TCPAddr).Port; p < 55000 {
			ports = append(ports, strconv.Itoa(p))
		}
	}
	return ports
}

// startRedisGroup runs script (a file of this repository) in a container of
// the Redis image with env, publishing ports one to one, and waits for ready
// in its log.
func startRedisGroup(t *testing.T, script string, ports []string, env map[string]string, ready string) *redisGroup {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("../..", script))
	if err != nil {
		t.Fatal(err)
	}
	var exposed []string
	for _, p := range ports {
		exposed = append(exposed, p+"/tcp")
	}
	ctr, err := testcontainers.Run(context.Background(), redisImage(),
		testcontainers.WithExposedPorts(exposed...),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{}
			for _, p := range ports {
				hc.PortBindings[network.MustParsePort(p+"/tcp")] = []network.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: p}}
			}
		}),
		testcontainers.WithFiles(testcontainers.ContainerFile{HostFilePath: path, ContainerFilePath: "/run.sh", FileMode: 0o755}),
		testcontainers.WithEnv(env),
		testcontainers.WithCmd("sh", "/run.sh"),
		testcontainers.WithWaitStrategy(wait.ForLog(ready).WithStartupTimeout(120*time.Second)),
	)
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start %s in %s: %v", script, redisImage(), err)
	}
	return &redisGroup{ctr: ctr, ports: ports}
}

// kill kills the Redis process on port with SIGKILL: no goodbye to anyone.
func (g *redisGroup) kill(t *testing.T, port string) {
	t.Helper()
	code, out, err := g.ctr.Exec(context.Background(), []string{"sh", "-c", "kill -9 $(cat " + g.pids + "/" + port + ".pid)"})
	if err != nil || code != 0 {
		b, _ := io.ReadAll(out)
		t.Fatalf("kill the Redis on %s: %v (exit %d) %s", port, err, code, b)
	}
}

func redisAt(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// redisCluster is a Redis Cluster of three primaries and three replicas.
type redisCluster struct {
	*redisGroup
	addrs []string
}

func startRedisCluster(t *testing.T) *redisCluster {
	t.Helper()
	ports := hostPorts(t, 6)
	g := startRedisGroup(t, "deploy/redis-cluster.sh", ports, map[string]string{
		"PORTS": strings.Join(ports, " "), "ANNOUNCE_IP": "127.0.0.1", "NODE_TIMEOUT": "1000", "REPLICAS": "1",
	}, "redis-cluster: ready")
	g.pids = "/data/cluster"
	rc := &redisCluster{redisGroup: g}
	for _, p := range ports {
		rc.addrs = append(rc.addrs, "127.0.0.1:"+p)
	}
	return rc
}

// shard is one primary's slot ranges, as CLUSTER SLOTS tells.
type shard struct {
	primary  string
	replicas []string
	ranges   [][2]int
}

// shards reads the slot map from a node that answers (the replicas from
// CLUSTER NODES: CLUSTER SLOTS leaves out a replica whose offset is still 0).
func (rc *redisCluster) shards(t *testing.T) []shard {
	t.Helper()
	for _, a := range rc.addrs {
		c := redisAt(t, a)
		slots, err := c.ClusterSlots(context.Background()).Result()
		if err != nil {
			continue
		}
		nodes, err := c.ClusterNodes(context.Background()).Result()
		if err != nil {
			continue
		}
		replicasOf := map[string][]string{}
		for line := range strings.Lines(nodes) {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			addr, _, _ := strings.Cut(f[1], "@")
			if strings.Contains(f[2], "slave") && !strings.Contains(f[2], "fail") {
				replicasOf[f[3]] = append(replicasOf[f[3]], addr)
			}
		}
		by := map[string]*shard{}
		for _, s := range slots {
			p := s.Nodes[0].Addr
			if by[p] == nil {
				by[p] = &shard{primary: p, replicas: replicasOf[s.Nodes[0].ID]}
			}
			by[p].ranges = append(by[p].ranges, [2]int{int(s.Start), int(s.End)})
		}
		var out []shard
		for _, s := range by {
			out = append(out, *s)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].primary < out[j].primary })
		return out
	}
	t.Fatal("no node of the cluster answers CLUSTER SLOTS")
	return nil
}

// slots returns the hash slot of each key (CLUSTER KEYSLOT, pipelined).
func (rc *redisCluster) slots(t *testing.T, keys []string) []int {
	t.Helper()
	c := redisAt(t, rc.shards(t)[0].primary)
	pipe := c.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.ClusterKeySlot(context.Background(), k)
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := make([]int, len(keys))
	for i, c := range cmds {
		out[i] = int(c.Val())
	}
	return out
}

// ownerOf returns the primary that serves slot.
func ownerOf(shards []shard, slot int) string {
	for _, s := range shards {
		for _, r := range s.ranges {
			if slot >= r[0] && slot <= r[1] {
				return s.primary
			}
		}
	}
	return ""
}

// startNodes starts n nodes on the cluster, sharing prefix.
func (rc *redisCluster) startNodes(t *testing.T, n int, prefix string, env ...string) []*node {
	t.Helper()
	var nodes []*node
	for i := range n {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node-%c", 'a'+i), append([]string{
			"HUB_REDIS_CLUSTER=" + strings.Join(rc.addrs, ","), "HUB_REDIS_PREFIX=" + prefix,
			"HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s", "HUB_DRAIN_DELAY=0s",
		}, env...)...))
	}
	for _, nd := range nodes {
		nd.waitReady(60 * time.Second)
	}
	return nodes
}

func wsURLs(nodes []*node) []string {
	var u []string
	for _, n := range nodes {
		u = append(u, n.wsURL())
	}
	return u
}

// TestRedisCluster runs the hub on one Redis Cluster of three primaries and
// three replicas: first the tests that leave it whole (side by side), then
// the one that kills a primary.
func TestRedisCluster(t *testing.T) {
	rc := startRedisCluster(t)
	t.Run("whole", func(t *testing.T) {
		t.Run("ThousandRoomsOverEveryShard", func(t *testing.T) { t.Parallel(); clusterThousandRooms(t, rc) })
		t.Run("SlotMigratedWhilePublishing", func(t *testing.T) { t.Parallel(); clusterSlotMigration(t, rc) })
	})
	t.Run("PrimaryKilledUnderLoad", func(t *testing.T) { clusterPrimaryKilled(t, rc) })
}

// Three nodes, 1,000 rooms whose slots cover every shard, each room with
// members on two nodes and its publisher on the third: every member gets
// every message of its rooms exactly once, in order; each primary counts a
// subscription (one per node with members) for the rooms it serves and none
// for the others, nor for the 100 rooms published to that have no member.
func clusterThousandRooms(t *testing.T, rc *redisCluster) {
	prefix := uniquePrefix()
	nodes := rc.startNodes(t, 3, prefix, "HUB_MAX_ROOMS_PER_CLIENT=2000", "HUB_CLIENT_RATE=0")
	const rooms, empty, msgs = 1000, 100, 3
	members := make([]*hubtest.Client, 3)
	mine := make([][]int, 3) // the rooms of each member
	for k, n := range nodes {
		members[k] = dialNode(t, n)
	}
	for i := range rooms {
		for _, k := range []int{i % 3, (i + 1) % 3} {
			members[k].Send(`{"type":"subscribe","room":"r%d","id":%d}`, i, i)
			mine[k] = append(mine[k], i)
		}
	}
	for k, m := range members {
		for range mine[k] {
			if a := m.Next(30 * time.Second); a["type"] != "ack" {
				t.Fatalf("member %d: got %v, want a subscribe ack", k, a)
			}
		}
	}
	pubs := make([]*hubtest.Client, 3)
	for k, n := range nodes {
		pubs[k] = dialNode(t, n)
	}
	for m := range msgs {
		for i := range rooms {
			pubs[(i+2)%3].Send(`{"type":"publish","room":"r%d","data":{"i":%d,"m":%d}}`, i, i, m)
		}
	}
	for i := range empty {
		pubs[i%3].Send(`{"type":"publish","room":"q%d","data":{"i":%d,"m":0}}`, i, i)
	}
	for k, m := range members {
		next := map[int]int{}
		for range len(mine[k]) * msgs {
			obj := m.NextOfType("message", 30*time.Second)
			d := obj["data"].(map[string]any)
			i, n := int(d["i"].(float64)), int(d["m"].(float64))
			if obj["room"] != "r"+strconv.Itoa(i) || n != next[i] || obj["offset"] != float64(n+1) {
				t.Fatalf("member on %s: got %v, want message %d of room r%d at offset %d", nodes[k].id, obj, next[i], i, next[i]+1)
			}
			next[i]++
		}
		m.ExpectNothing(200 * time.Millisecond)
	}

	// Where the subscriptions are: PUBSUB SHARDNUMSUB on every primary.
	var channels []string
	for i := range rooms {
		channels = append(channels, prefix+"{r"+strconv.Itoa(i)+"}")
	}
	for i := range empty {
		channels = append(channels, prefix+"{q"+strconv.Itoa(i)+"}")
	}
	slots := rc.slots(t, channels)
	shards := rc.shards(t)
	if len(shards) != 3 {
		t.Fatalf("got %d primaries, want 3", len(shards))
	}
	perShard := map[string]int{}
	for _, sh := range shards {
		var bad []string
		counted := 0
		ok := hubtest.Poll(10*time.Second, func() bool {
			args := append([]any{"pubsub", "shardnumsub"}, anys(channels)...)
			res, err := redisAt(t, sh.primary).Do(context.Background(), args...).Slice()
			if err != nil {
				bad = []string{err.Error()}
				return false
			}
			bad, counted = nil, 0
			for j := 0; j+1 < len(res); j += 2 {
				ch, _ := res[j].(string)
				n, _ := res[j+1].(int64)
				idx := slices.Index(channels, ch)
				want := int64(0)
				if idx >= 0 && idx < rooms && ownerOf(shards, slots[idx]) == sh.primary {
					want = 2
					counted++
				}
				if n != want {
					bad = append(bad, fmt.Sprintf("%s: %d, want %d", ch, n, want))
				}
			}
			return len(bad) == 0
		})
		if !ok {
			t.Errorf("PUBSUB SHARDNUMSUB on %s: %d wrong, the first %v", sh.primary, len(bad), bad[:min(len(bad), 5)])
		}
		perShard[sh.primary] = counted
		if counted == 0 {
			t.Errorf("primary %s serves none of the 1,000 rooms: they do not cover every shard", sh.primary)
		}
	}
	// Each node counts its subscriptions per shard, and every shard is ready.
	for k, n := range nodes {
		total := 0.0
		for _, sh := range shards {
			if got := n.metric(`hub_redis_shard_ready{shard="` + sh.primary + `"}`); got != 1 {
				t.Errorf("node %s: hub_redis_shard_ready for %s: got %v, want 1", n.id, sh.primary, got)
			}
			total += n.metric(`hub_redis_shard_subscriptions{shard="` + sh.primary + `"}`)
		}
		if total != float64(len(mine[k])) {
			t.Errorf("node %s: hub_redis_shard_subscriptions add up to %v, want %d", n.id, total, len(mine[k]))
		}
	}
	t.Logf("%d rooms (%v per primary) x %d messages, members on two nodes each, publishers on the third: every member every message once, in order",
		rooms, perShard, msgs)
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// A room's slot moves to another primary, by hand as redis-cli --cluster
// reshard does it (IMPORTING, MIGRATING, MIGRATE of its keys, the new
// owner), while it is published to: members on all three nodes get every
// message once, in order, and no gap; the subscriptions follow the slot.
func clusterSlotMigration(t *testing.T, rc *redisCluster) {
	prefix := uniquePrefix()
	nodes := rc.startNodes(t, 3, prefix)
	urls := wsURLs(nodes)
	const room = "moving"
	ch := prefix + "{" + room + "}"
	var trs []*tracker
	for k := range nodes {
		for range 3 {
			trs = append(trs, track(t, room, urls[k], urls[(k+1)%3]))
		}
	}
	p := publish(t, room, 100, urls...)
	time.Sleep(time.Second)
	slot := rc.slots(t, []string{ch})[0]
	shards := rc.shards(t)
	from := ownerOf(shards, slot)
	var to string
	for _, sh := range shards {
		if sh.primary != from {
			to = sh.primary
			break
		}
	}
	resyncsBefore, fillsBefore := 0.0, 0.0
	for _, n := range nodes {
		resyncsBefore += n.metric("hub_redis_gaps_total")
		fillsBefore += n.metric("hub_history_fills_total")
	}
	began := time.Now()
	migrate(t, rc, slot, from, to)
	took := time.Since(began)
	time.Sleep(time.Second)
	last := p.halt()
	settle(t, trs, last+1)
	for i, tr := range trs {
		tr.check(fmt.Sprintf("member %d", i), 0, last)
		if tr.gaps != 0 {
			t.Errorf("member %d: told %d gaps, want none", i, tr.gaps)
		}
	}
	if got := numSubsAt(t, to, ch); got != 3 {
		t.Errorf("PUBSUB SHARDNUMSUB %s at the new owner %s: got %d, want 3 (one per node)", ch, to, got)
	}
	if got := numSubsAt(t, from, ch); got != 0 {
		t.Errorf("PUBSUB SHARDNUMSUB %s at the old owner %s: got %d, want 0", ch, from, got)
	}
	resyncs, fills := -resyncsBefore, -fillsBefore
	for _, n := range nodes {
		resyncs += n.metric("hub_redis_gaps_total")
		fills += n.metric("hub_history_fills_total")
	}
	t.Logf("slot %d moved from %s to %s in %v while %d messages were published at 100/s: every member (9, on 3 nodes) every message once, in order, no gap; %v room resubscriptions, %v history fills",
		slot, from, to, took.Round(time.Millisecond), last+1, resyncs, fills)
}

func numSubsAt(t *testing.T, addr, ch string) int64 {
	t.Helper()
	res, err := redisAt(t, addr).Do(context.Background(), "pubsub", "shardnumsub", ch).Slice()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := res[1].(int64)
	return n
}

// migrate moves slot from one primary to another: IMPORTING, MIGRATING, the
// keys, then the owner, told to every primary.
func migrate(t *testing.T, rc *redisCluster, slot int, from, to string) {
	t.Helper()
	ctx := context.Background()
	src, dst := redisAt(t, from), redisAt(t, to)
	id := func(c *redis.Client) string {
		v, err := c.Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	srcID, dstID := id(src), id(dst)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dst.Do(ctx, "cluster", "setslot", slot, "importing", srcID).Err())
	must(src.Do(ctx, "cluster", "setslot", slot, "migrating", dstID).Err())
	host, port, _ := net.SplitHostPort(to)
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		args = append(args, anys(keys)...)
		must(src.Do(ctx, args...).Err())
	}
	must(dst.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
	must(src.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
	for _, sh := range rc.shards(t) {
		if sh.primary != from && sh.primary != to {
			must(redisAt(t, sh.primary).Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
		}
	}
}

// whenTrue polls cond every 20ms from now on, in the background, and
// returns a function that waits (30s at most) for it to hold and says how
// long that took.
func whenTrue(cond func() bool) func() time.Duration {
	start := time.Now()
	took := make(chan time.Duration, 1)
	go func() {
		hubtest.Poll(30*time.Second, cond)
		took <- time.Since(start)
	}()
	return func() time.Duration { return <-took }
}

// historyOf reads a room's whole history through a node's GET /v1/history.
func historyOf(t *testing.T, n *node, room string) (epoch string, data []int) {
	t.Helper()
	resp, err := http.Get(n.url("/v1/history?room=" + room + "&since=0&limit=10000"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Epoch    string `json:"epoch"`
		Messages []struct {
			Data json.RawMessage `json:"data"`
		} `json:"messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/history of %s: %d %v", room, resp.StatusCode, err)
	}
	for _, m := range h.Messages {
		var i int
		json.Unmarshal(m.Data, &i)
		data = append(data, i)
	}
	return h.Epoch, data
}

// failoverCheck asserts what a primary's failover may and may not do to the
// members of rooms published 0..last[room]: a member told no gap has every
// message once, in order; a member told gap still has every message the
// history kept. It returns the gaps told.
func failoverCheck(t *testing.T, n *node, rooms []string, trs map[string][]*tracker, last map[string]int) (gaps int) {
	t.Helper()
	for _, room := range rooms {
		eventually(t, 30*time.Second, func() bool {
			for _, tr := range trs[room] {
				tr.mu.Lock()
				done := len(tr.data) > 0 && tr.data[len(tr.data)-1] == last[room]
				tr.mu.Unlock()
				if !done {
					return false
				}
			}
			return true
		}, "every member of "+room+" to get its last message")
		time.Sleep(300 * time.Millisecond) // anything doubled would show now
		_, kept := historyOf(t, n, room)
		for i, tr := range trs[room] {
			if tr.gaps == 0 {
				tr.check(fmt.Sprintf("%s: member %d", room, i), 0, last[room])
				continue
			}
			gaps += tr.gaps
			tr.mu.Lock()
			have := map[int]bool{}
			for _, d := range tr.data {
				have[d] = true
			}
			tr.mu.Unlock()
			for _, d := range kept {
				if !have[d] {
					t.Errorf("%s: member %d (told gap) lacks message %d, which the history kept", room, i, d)
				}
			}
		}
	}
	return gaps
}

// The primary that serves some of the rooms is killed under load: its
// replica takes over, every node is ready again, and the members lose
// nothing the history kept (what it did not keep is told as a gap).
func clusterPrimaryKilled(t *testing.T, rc *redisCluster) {
	prefix := uniquePrefix()
	nodes := rc.startNodes(t, 3, prefix, "HUB_HISTORY_SIZE=1000")
	urls := wsURLs(nodes)
	shards := rc.shards(t)
	victim := shards[0]
	// Three rooms on the victim's slots, three elsewhere.
	var rooms []string
	var on, off int
	for i := 0; on < 3 || off < 3; i++ {
		room := "f" + strconv.Itoa(i)
		mineIs := ownerOf(shards, rc.slots(t, []string{prefix + "{" + room + "}"})[0]) == victim.primary
		if mineIs && on < 3 {
			on++
			rooms = append(rooms, room)
		} else if !mineIs && off < 3 {
			off++
			rooms = append(rooms, room)
		}
	}
	trs := map[string][]*tracker{}
	pubs := map[string]*publisher{}
	for j, room := range rooms {
		for k := range nodes {
			trs[room] = append(trs[room], track(t, room, urls[k], urls[(k+1)%3]))
		}
		pubs[room] = publish(t, room, 40, urls[j%3], urls[(j+1)%3])
	}
	time.Sleep(1500 * time.Millisecond)
	_, port, _ := net.SplitHostPort(victim.primary)
	killed := time.Now()
	rc.kill(t, port)
	promotedAfter := whenTrue(func() bool {
		for _, r := range victim.replicas {
			if role, err := redisAt(t, r).Do(context.Background(), "role").Slice(); err == nil && len(role) > 0 && role[0] == "master" {
				return true
			}
		}
		return false
	})
	// The nodes say which shard is blind, then are ready again.
	for _, n := range nodes {
		var reason string
		if !hubtest.Poll(10*time.Second, func() bool {
			var code int
			code, reason = n.readyStatus()
			return code == 503 && strings.Contains(reason, victim.primary)
		}) {
			t.Errorf("node %s: /readyz did not name the killed primary %s (last reason %q)", n.id, victim.primary, reason)
		}
	}
	var readyAfter time.Duration
	for _, n := range nodes {
		n.waitReady(60 * time.Second)
		readyAfter = max(readyAfter, time.Since(killed))
	}
	time.Sleep(time.Second)
	last := map[string]int{}
	for _, room := range rooms {
		last[room] = pubs[room].halt()
	}
	var promoted string
	for _, sh := range rc.shards(t) {
		if slices.Contains(victim.replicas, sh.primary) {
			promoted = sh.primary
		}
	}
	if promoted == "" {
		t.Errorf("no replica of %s (%v) serves its slots now", victim.primary, victim.replicas)
	}
	gaps := failoverCheck(t, nodes[0], rooms, trs, last)
	fences, reconnects := 0.0, 0.0
	for _, n := range nodes {
		fences += n.metric("hub_redis_history_fences_total")
		reconnects += n.metric("hub_redis_reconnects_total")
	}
	if reconnects < 3 {
		t.Errorf("hub_redis_reconnects_total: got %v over 3 nodes, want at least one each", reconnects)
	}
	p := promotedAfter()
	t.Logf("primary %s killed under load (6 rooms, 3 on it, 40 publishes/s each): replica %s promoted %v after the kill; every node ready again %v after the kill (%v after the promotion); %d gaps told, %v histories fenced; messages %v",
		victim.primary, promoted, p.Round(time.Millisecond), readyAfter.Round(time.Millisecond), (readyAfter - p).Round(time.Millisecond), gaps, fences, last)
}

// Sentinel: a primary, its replica and three sentinels; three nodes. The
// primary is killed under load: Sentinel promotes the replica, the nodes
// follow it, resubscribe and fill from the history, and are ready again.
func TestRedisSentinelFailover(t *testing.T) {
	ports := hostPorts(t, 5)
	g := startRedisGroup(t, "test/integration/testdata/redis-sentinel.sh", ports, map[string]string{
		"PRIMARY_PORT": ports[0], "REPLICA_PORT": ports[1], "SENTINEL_PORTS": strings.Join(ports[2:], " "),
	}, "redis-sentinel: ready")
	g.pids = "/data/sentinel"
	var sentinels []string
	for _, p := range ports[2:] {
		sentinels = append(sentinels, "127.0.0.1:"+p)
	}
	prefix := uniquePrefix()
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node-%c", 'a'+i),
			"HUB_REDIS_SENTINELS="+strings.Join(sentinels, ","), "HUB_REDIS_SENTINEL_MASTER=mymaster",
			"HUB_REDIS_PREFIX="+prefix, "HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s", "HUB_HISTORY_SIZE=1000", "HUB_DRAIN_DELAY=0s"))
	}
	for _, n := range nodes {
		n.waitReady(60 * time.Second)
	}
	urls := wsURLs(nodes)
	rooms := []string{"s0", "s1", "s2"}
	trs := map[string][]*tracker{}
	pubs := map[string]*publisher{}
	for j, room := range rooms {
		for k := range nodes {
			trs[room] = append(trs[room], track(t, room, urls[k], urls[(k+1)%3]))
		}
		pubs[room] = publish(t, room, 40, urls[j%3], urls[(j+1)%3])
	}
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	g.kill(t, ports[0])
	promotedAfter := whenTrue(func() bool {
		addr, err := redisAt(t, sentinels[0]).Do(context.Background(), "sentinel", "get-master-addr-by-name", "mymaster").StringSlice()
		return err == nil && len(addr) == 2 && addr[1] == ports[1]
	})
	for _, n := range nodes {
		n.waitStatus(503, 10*time.Second) // blind: not ready
	}
	var readyAfter time.Duration
	for _, n := range nodes {
		n.waitReady(60 * time.Second)
		readyAfter = max(readyAfter, time.Since(killed))
	}
	time.Sleep(time.Second)
	last := map[string]int{}
	for _, room := range rooms {
		last[room] = pubs[room].halt()
	}
	addr, err := redisAt(t, sentinels[0]).Do(context.Background(), "sentinel", "get-master-addr-by-name", "mymaster").StringSlice()
	if err != nil || len(addr) != 2 || addr[1] != ports[1] {
		t.Errorf("Sentinel names %v (%v) as the primary, want the replica on %s", addr, err, ports[1])
	}
	gaps := failoverCheck(t, nodes[0], rooms, trs, last)
	reconnects := 0.0
	for _, n := range nodes {
		reconnects += n.metric(`hub_redis_shard_reconnects_total{shard="mymaster"}`)
	}
	if reconnects < 3 {
		t.Errorf("hub_redis_shard_reconnects_total{shard=mymaster}: got %v over 3 nodes, want at least one each", reconnects)
	}
	p := promotedAfter()
	t.Logf("Sentinel primary killed under load (3 rooms, 40 publishes/s each): Sentinel named the replica %v after the kill; every node ready again %v after the kill (%v after that); %d gaps told; messages %v",
		p.Round(time.Millisecond), readyAfter.Round(time.Millisecond), (readyAfter - p).Round(time.Millisecond), gaps, last)
}
