package pubsub

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
)

// presenceRecorder is a Sink that also records presence events and commands.
type presenceRecorder struct {
	*recorder
	mu       sync.Mutex
	joins    []Member
	leaves   []Member
	commands []Command
}

func newPresenceRecorder() *presenceRecorder { return &presenceRecorder{recorder: newRecorder()} }

func (p *presenceRecorder) Presence(e PresenceEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Leave {
		p.leaves = append(p.leaves, e.Members...)
	} else {
		p.joins = append(p.joins, e.Members...)
	}
}

func (p *presenceRecorder) Command(c Command) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.commands = append(p.commands, c)
}

func (p *presenceRecorder) counts() (joins, leaves, commands int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.joins), len(p.leaves), len(p.commands)
}

func members(t *testing.T, b interface {
	Members(context.Context, string, int) (int, []Member, error)
}, room string, limit int) (int, []string) {
	t.Helper()
	n, ms, err := b.Members(context.Background(), room, limit)
	if err != nil {
		t.Fatalf("Members(%s): %v", room, err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.Client+"/"+m.User+"/"+m.Node)
	}
	slices.Sort(ids)
	return n, ids
}

func TestRedisPresenceJoinLeaveAcrossBrokers(t *testing.T) {
	addr := hubtest.RedisServer(t)
	ra, rb := newPresenceRecorder(), newPresenceRecorder()
	a := runBroker(t, addr, "a", "pr:", ra)
	b := runBroker(t, addr, "b", "pr:", rb)
	// b watches the room; a's members come and go.
	b.Subscribe("room")
	if err := b.WaitSubscribed(context.Background(), "room"); err != nil {
		t.Fatal(err)
	}
	b.Watch("room")
	b.Join("room", Member{Client: "b.1", User: "bob", Node: "b"})
	if !hubtest.Poll(5*time.Second, func() bool { j, _, _ := rb.counts(); return j == 1 }) {
		t.Fatal("the watcher did not hear its own join")
	}
	for i := range 10 {
		a.Join("room", Member{Client: fmt.Sprintf("a.%d", i), User: "ann", Node: "a"})
	}
	if !hubtest.Poll(5*time.Second, func() bool { j, _, _ := rb.counts(); return j == 11 }) {
		j, _, _ := rb.counts()
		t.Fatalf("joins heard: got %d, want 11", j)
	}
	n, ids := members(t, b, "room", 3)
	if n != 11 || len(ids) != 3 {
		t.Fatalf("presence with limit 3: got count %d, %d members; want 11, 3", n, len(ids))
	}
	a.Leave("room", Member{Client: "a.3"})
	a.Leave("room", Member{Client: "a.3"}) // twice: one leave
	if !hubtest.Poll(5*time.Second, func() bool { _, l, _ := rb.counts(); return l == 1 }) {
		t.Fatal("the leave was not heard")
	}
	rb.mu.Lock()
	got := rb.leaves[0]
	rb.mu.Unlock()
	if got != (Member{Client: "a.3", User: "ann", Node: "a"}) {
		t.Fatalf("leave: got %+v, want a.3/ann/a", got)
	}
	if n, _ := members(t, a, "room", 100); n != 10 {
		t.Fatalf("count after a leave: got %d, want 10", n)
	}
	rooms, err := a.Rooms(context.Background(), "", 10)
	if err != nil || len(rooms) != 1 || rooms[0] != (RoomCount{Room: "room", Members: 10}) {
		t.Fatalf("Rooms: got %v, %v; want [room 10]", rooms, err)
	}
}

func TestRedisPresenceUnwatchedRoomPublishesNothing(t *testing.T) {
	addr := hubtest.RedisServer(t)
	ra, rb := newPresenceRecorder(), newPresenceRecorder()
	a := runBroker(t, addr, "a", "pr:", ra)
	b := runBroker(t, addr, "b", "pr:", rb)
	b.Subscribe("quiet")
	if err := b.WaitSubscribed(context.Background(), "quiet"); err != nil {
		t.Fatal(err)
	}
	a.Join("quiet", Member{Client: "a.1", Node: "a"})
	if !hubtest.Poll(5*time.Second, func() bool { n, _ := members(t, b, "quiet", 10); return n == 1 }) {
		t.Fatal("entry not written")
	}
	a.Leave("quiet", Member{Client: "a.1"})
	if !hubtest.Poll(5*time.Second, func() bool { n, _ := members(t, b, "quiet", 10); return n == 0 }) {
		t.Fatal("entry not removed")
	}
	// A watched room's event after them proves they would have arrived by now.
	b.Subscribe("loud")
	b.WaitSubscribed(context.Background(), "loud")
	b.Watch("loud")
	b.Join("loud", Member{Client: "b.1", Node: "b"}) // heard once the watch is written
	if !hubtest.Poll(5*time.Second, func() bool { j, _, _ := rb.counts(); return j == 1 }) {
		t.Fatal("the watcher's own join did not arrive")
	}
	a.Join("loud", Member{Client: "a.2", Node: "a"})
	if !hubtest.Poll(5*time.Second, func() bool { j, _, _ := rb.counts(); return j == 2 }) {
		t.Fatal("the watched room's join did not arrive")
	}
	if j, l, _ := rb.counts(); j != 2 || l != 0 {
		t.Fatalf("events: got %d joins, %d leaves; want 2, 0 (the unwatched room's none)", j, l)
	}
}

func TestRedisPresenceDeadNodeCleanedUpOnce(t *testing.T) {
	addr := hubtest.RedisServer(t)
	timeout := func(c *RedisConfig) { c.NodeTimeout = 2 * time.Second }
	watchers := []*presenceRecorder{newPresenceRecorder(), newPresenceRecorder()}
	var live []*Redis
	for i, rec := range watchers {
		b := runBroker(t, addr, fmt.Sprintf("w%d", i), "pd:", rec, timeout)
		b.Subscribe("room")
		b.WaitSubscribed(context.Background(), "room")
		b.Watch("room")
		live = append(live, b)
	}
	// The dying node: run without LeaveCluster, then stop (as a SIGKILL
	// would leave it: entries in Redis, heartbeat expiring).
	dead, err := NewRedis(RedisConfig{URL: "redis://" + addr, NodeID: "d", Prefix: "pd:", NodeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { dead.Run(ctx, newPresenceRecorder()); close(done) }()
	for i := range 100 {
		dead.Join("room", Member{Client: fmt.Sprintf("d.%d", i), Node: "d"})
	}
	if !hubtest.Poll(5*time.Second, func() bool { n, _ := members(t, live[0], "room", 1); return n == 100 }) {
		t.Fatal("the dying node's entries were not written")
	}
	if !hubtest.Poll(5*time.Second, func() bool { ns, _ := live[0].Nodes(context.Background()); return len(ns) == 3 }) {
		ns, _ := live[0].Nodes(context.Background())
		t.Fatalf("nodes: got %v, want 3", ns)
	}
	cancel()
	<-done
	dead.Close()
	if !hubtest.Poll(10*time.Second, func() bool { n, _ := members(t, live[0], "room", 1); return n == 0 }) {
		t.Fatal("the dead node's entries were not removed")
	}
	for i, rec := range watchers {
		if !hubtest.Poll(5*time.Second, func() bool { _, l, _ := rec.counts(); return l >= 100 }) {
			_, l, _ := rec.counts()
			t.Fatalf("watcher %d: got %d leaves, want 100", i, l)
		}
	}
	time.Sleep(2 * time.Second) // a second cleanup would have run by now
	for i, rec := range watchers {
		if _, l, _ := rec.counts(); l != 100 {
			t.Fatalf("watcher %d: got %d leaves, want exactly 100 (one cleanup)", i, l)
		}
	}
	if ns, _ := live[0].Nodes(context.Background()); len(ns) != 2 {
		t.Fatalf("nodes after the death: got %v, want 2", ns)
	}
}

func TestRedisPresenceReannouncedAfterDataLoss(t *testing.T) {
	addr := hubtest.RedisServer(t)
	rec := newPresenceRecorder()
	a := runBroker(t, addr, "a", "pf:", rec)
	for i := range 5 {
		a.Join("room", Member{Client: fmt.Sprintf("a.%d", i), Node: "a"})
	}
	if !hubtest.Poll(5*time.Second, func() bool { n, _ := members(t, a, "room", 10); return n == 5 }) {
		t.Fatal("entries not written")
	}
	a.client.FlushAll(context.Background()) // Redis lost its data
	if !hubtest.Poll(10*time.Second, func() bool { n, _ := members(t, a, "room", 10); return n == 5 }) {
		n, _ := members(t, a, "room", 10)
		t.Fatalf("after the loss: got %d entries, want 5 announced again", n)
	}
}

func TestRedisCommandReachesEveryNode(t *testing.T) {
	addr := hubtest.RedisServer(t)
	ra, rb := newPresenceRecorder(), newPresenceRecorder()
	a := runBroker(t, addr, "a", "pc:", ra)
	runBroker(t, addr, "b", "pc:", rb)
	want := Command{Op: "disconnect", User: "u1", Code: 4100, Reason: "bye"}
	if !hubtest.Poll(5*time.Second, func() bool {
		_, _, n := rb.counts()
		if n > 0 {
			return true
		}
		a.Command(context.Background(), want) // until b's control subscription is live
		time.Sleep(100 * time.Millisecond)
		return false
	}) {
		t.Fatal("the command did not reach the other node")
	}
	rb.mu.Lock()
	got := rb.commands[0]
	rb.mu.Unlock()
	if got != want {
		t.Fatalf("command: got %+v, want %+v", got, want)
	}
}

func TestRedisLeaveClusterRemovesEntries(t *testing.T) {
	addr := hubtest.RedisServer(t)
	rw := newPresenceRecorder()
	w := runBroker(t, addr, "w", "pl:", rw)
	w.Subscribe("room")
	w.WaitSubscribed(context.Background(), "room")
	w.Watch("room")
	a := runBroker(t, addr, "a", "pl:", newPresenceRecorder())
	for i := range 7 {
		a.Join("room", Member{Client: fmt.Sprintf("a.%d", i), Node: "a"})
	}
	if !hubtest.Poll(5*time.Second, func() bool { n, _ := members(t, w, "room", 10); return n == 7 }) {
		t.Fatal("entries not written")
	}
	a.Leave("room", Member{Client: "a.0"})
	if err := a.LeaveCluster(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := members(t, w, "room", 10); n != 0 {
		t.Fatalf("after LeaveCluster: %d entries, want 0", n)
	}
	if !hubtest.Poll(5*time.Second, func() bool { _, l, _ := rw.counts(); return l == 7 }) {
		_, l, _ := rw.counts()
		t.Fatalf("leaves: got %d, want 7 (each once)", l)
	}
}

func TestMemoryPresence(t *testing.T) {
	m := NewMemory(MemoryConfig{NodeInfo: func() NodeInfo { return NodeInfo{ID: "n"} }})
	rec := newPresenceRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx, rec); close(done) }()
	defer func() { cancel(); <-done }()
	m.Join("quiet", Member{Client: "c0"})
	m.Watch("room")
	m.Join("room", Member{Client: "c1", User: "u", Node: "n"})
	m.Join("room", Member{Client: "c2", Node: "n"})
	m.Join("room", Member{Client: "c2", Node: "n"})
	m.Leave("room", Member{Client: "c1"})
	m.Leave("quiet", Member{Client: "c0"})
	if !hubtest.Poll(5*time.Second, func() bool { j, l, _ := rec.counts(); return j == 2 && l == 1 }) {
		j, l, _ := rec.counts()
		t.Fatalf("events: got %d joins, %d leaves; want 2, 1", j, l)
	}
	if n, ids := members(t, m, "room", 10); n != 1 || ids[0] != "c2//n" {
		t.Fatalf("members: got %d %v, want 1 [c2//n]", n, ids)
	}
	rooms, _ := m.Rooms(context.Background(), "", 10)
	if len(rooms) != 1 || rooms[0].Room != "room" {
		t.Fatalf("rooms: got %v, want [room]", rooms)
	}
	if err := m.Command(context.Background(), Command{Op: "disconnect", User: "u"}); err != nil {
		t.Fatal(err)
	}
	if !hubtest.Poll(5*time.Second, func() bool { _, _, c := rec.counts(); return c == 1 }) {
		t.Fatal("command not delivered")
	}
}

// A process whose origin is still in the cluster view (one before it with
// the same origin stopped without leaving) becomes ready all the same.
func TestRedisReadyWithItsOriginAlreadyInTheView(t *testing.T) {
	addr := hubtest.RedisServer(t)
	first, err := NewRedis(RedisConfig{URL: "redis://" + addr, NodeID: "same", Prefix: "po:"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { first.Run(ctx, newPresenceRecorder()); close(done) }()
	if !hubtest.Poll(10*time.Second, func() bool { return first.Ready() == nil }) {
		t.Fatalf("first broker not ready: %v", first.Ready())
	}
	cancel()
	<-done
	first.Close()                                            // no LeaveCluster: its heartbeat stays in the view
	runBroker(t, addr, "same", "po:", newPresenceRecorder()) // fails the test unless ready
}
