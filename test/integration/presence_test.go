package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	hubclient "github.com/hubcluster/hubcluster/client"
	"github.com/hubcluster/hubcluster/internal/hubtest"
)

// Presence (protocol v1.1): who is in a room, cluster-wide. Every node
// writes its own members' entries to Redis and heartbeats; members that
// asked for it get join and leave events; the live nodes remove a dead
// node's entries within HUB_NODE_TIMEOUT (plus about a second), with one
// leave per entry. These tests run real nodes on real Redis with JWT auth
// on, so every entry carries its token's subject as user.

const (
	presenceSecret  = "presence-test-secret-0123456789abcdef"
	presenceKey     = "presence-test-api-key"
	presenceTimeout = 3 * time.Second // HUB_NODE_TIMEOUT in these tests
	// deadBound is how long after a SIGKILL the others may still list the
	// dead node or its entries: HUB_NODE_TIMEOUT and the "~1s" the
	// contract adds (the nodes beat and look for dead ones once a second,
	// and the last beat came at most a second before the kill), and half a
	// second for a loaded machine.
	deadBound = presenceTimeout + 1500*time.Millisecond
)

// TestPresence runs the presence tests that can share one Redis side by
// side: each cluster has its own HUB_REDIS_PREFIX (and node names), which
// keeps its keys, channels, heartbeats and rooms apart from the others'.
// The Redis restart has a Redis of its own.
func TestPresence(t *testing.T) {
	r := startRedis(t)
	for _, tc := range []struct {
		name string
		test func(t *testing.T, r *redisServer)
	}{
		{"ThreeNodes", presenceThreeNodes},
		{"KilledNode", presenceKilledNode},
		{"DrainedNode", presenceDrainedNode},
		{"AdminHTTP", presenceAdminHTTP},
		{"RedisRestart", func(t *testing.T, _ *redisServer) { presenceRedisRestart(t) }},
		{"SubscriptionLoss", presenceSubscriptionLoss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, r)
		})
	}
}

// presenceEnv is the nodes' settings in these tests, and extra.
func presenceEnv(extra ...string) []string {
	return append([]string{
		"HUB_JWT_SECRET=" + presenceSecret, "HUB_API_KEY=" + presenceKey,
		"HUB_NODE_TIMEOUT=" + presenceTimeout.String(),
		"HUB_DRAIN_DELAY=300ms", "HUB_RECONNECT_WINDOW=2s",
	}, extra...)
}

// startPresenceCluster starts n nodes named name-a, name-b, ... on r (through
// a proxy of their own) with a prefix of their own, and waits until they are
// ready.
func startPresenceCluster(t *testing.T, r *redisServer, name string, n int, env ...string) *cluster {
	t.Helper()
	c := &cluster{redis: r, proxy: newProxy(t, r.addr), prefix: uniquePrefix()}
	for i := range n {
		c.nodes = append(c.nodes, c.startNode(t, fmt.Sprintf("%s-%c", name, 'a'+i), presenceEnv(env...)...))
	}
	for _, nd := range c.nodes {
		nd.waitReady(60 * time.Second)
	}
	return c
}

// userToken is a token for user that grants rooms (every room when none).
func userToken(user string, rooms ...string) string {
	if len(rooms) == 0 {
		rooms = []string{"*"}
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "exp": time.Now().Add(time.Hour).Unix(), "subscribe": rooms, "publish": []string{"*"},
	}).SignedString([]byte(presenceSecret))
	if err != nil {
		panic(err) // HS256 with a key cannot fail
	}
	return s
}

// dialUser connects to n as user (with ?token=), granted rooms.
func dialUser(t *testing.T, n *node, user string, rooms ...string) *hubtest.Client {
	t.Helper()
	return hubtest.Dial(t, n.wsURL()+"?token="+userToken(user, rooms...), nil)
}

// presenceMember is one entry of a presence reply, or a join or leave.
type presenceMember struct {
	Client string `json:"client"`
	User   string `json:"user"`
	Node   string `json:"node"`
}

func (m presenceMember) String() string { return m.User + "@" + m.Node + "(" + m.Client + ")" }

// presenceReply is a presence reply (WebSocket or HTTP), or an error.
type presenceReply struct {
	Type    string           `json:"type"`
	ID      any              `json:"id"`
	Room    string           `json:"room"`
	Count   int              `json:"count"`
	Members []presenceMember `json:"members"`
	Code    string           `json:"code"`
	Message string           `json:"message"`
}

func remarshal(from, to any) error {
	b, err := json.Marshal(from)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, to)
}

var presenceIDs atomic.Int64

// askPresence sends a presence request for room on c and returns the reply
// with its id: a presence, or an error object. Objects of other ids are
// skipped (ask on a client that is in no room). It may be called from any
// goroutine.
func askPresence(c *hubtest.Client, room string) (presenceReply, error) {
	id := fmt.Sprintf("presence-%d", presenceIDs.Add(1))
	if err := c.TrySend(`{"type":"presence","room":%q,"id":%q}`, room, id); err != nil {
		return presenceReply{}, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := c.TryNext(time.Until(deadline))
		if err != nil {
			return presenceReply{}, fmt.Errorf("presence %s: no reply: %w", room, err)
		}
		if m["id"] != id {
			continue
		}
		var rep presenceReply
		if err := remarshal(m, &rep); err != nil {
			return presenceReply{}, fmt.Errorf("presence %s: reply %v: %w", room, m, err)
		}
		return rep, nil
	}
}

// mustPresence is askPresence, failing the test unless a presence reply
// for room comes back.
func mustPresence(t *testing.T, c *hubtest.Client, room string) presenceReply {
	t.Helper()
	rep, err := askPresence(c, room)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Type != "presence" || rep.Room != room {
		t.Fatalf("presence %s: got %+v, want a presence reply for the room", room, rep)
	}
	return rep
}

// exactUsers says how rep differs from want (user -> node; users are
// unique in these tests): count and members must list exactly want, each
// entry with a client id of its own.
func exactUsers(rep presenceReply, want map[string]string) error {
	var problems []string
	if rep.Count != len(want) {
		problems = append(problems, fmt.Sprintf("count %d, want %d", rep.Count, len(want)))
	}
	seenUser, seenClient := map[string]bool{}, map[string]bool{}
	for _, m := range rep.Members {
		node, ok := want[m.User]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%v is listed and should not be", m))
		case m.Node != node:
			problems = append(problems, fmt.Sprintf("%v is listed on node %s, want %s", m, m.Node, node))
		case seenUser[m.User]:
			problems = append(problems, fmt.Sprintf("%v is listed twice", m))
		}
		if m.Client == "" || seenClient[m.Client] {
			problems = append(problems, fmt.Sprintf("%v: client id empty or not unique", m))
		}
		seenUser[m.User], seenClient[m.Client] = true, true
	}
	for _, u := range slices.Sorted(maps.Keys(want)) {
		if !seenUser[u] {
			problems = append(problems, fmt.Sprintf("%s@%s is missing", u, want[u]))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	if len(problems) > 12 {
		problems = append(problems[:12], fmt.Sprintf("and %d more", len(problems)-12))
	}
	return errors.New(strings.Join(problems, "; "))
}

// waitPresence asks asker for the presence of room until it lists exactly
// want, and returns how long that took; after timeout it fails the test,
// saying how the last reply differed. Entries are written in the
// background, "around" the subscribe's ack: a reply right after an ack may
// not list that member yet.
func waitPresence(t *testing.T, asker *hubtest.Client, room string, want map[string]string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var rep presenceReply
	var err error
	if !hubtest.Poll(timeout, func() bool {
		rep, err = askPresence(asker, room)
		return err == nil && rep.Type == "presence" && exactUsers(rep, want) == nil
	}) {
		if err == nil && rep.Type == "presence" {
			err = exactUsers(rep, want)
		}
		t.Fatalf("presence of %s after %v: %s %v", room, timeout, rep.Type, err)
	}
	return time.Since(start)
}

// clientsOf maps user to client id in rep.
func clientsOf(rep presenceReply) map[string]string {
	out := map[string]string{}
	for _, m := range rep.Members {
		out[m.User] = m.Client
	}
	return out
}

// received is an object a watcher got, and when; ev is its member when it
// is a join or a leave.
type received struct {
	m  map[string]any
	at time.Time
	ev presenceMember
}

// watcher is a member that asked for presence events: a goroutine of its
// own takes everything its connection delivers, as it arrives, and stamps
// it with the time.
type watcher struct {
	name string
	c    *hubtest.Client
	mu   sync.Mutex
	objs []received
	done chan struct{}
}

// watch connects to n as user, subscribes to room with presence: true, and
// waits for the ack.
func watch(t *testing.T, n *node, user, room string) *watcher {
	t.Helper()
	w := &watcher{name: user + "@" + n.id, c: dialUser(t, n, user), done: make(chan struct{})}
	go w.collect()
	t.Cleanup(func() {
		w.c.CloseNow()
		<-w.done
	})
	w.c.Send(`{"type":"subscribe","room":%q,"id":"watch","presence":true}`, room)
	var got map[string]any
	if !hubtest.Poll(10*time.Second, func() bool {
		for _, r := range w.objects() {
			if r.m["id"] == "watch" {
				got = r.m
				return true
			}
		}
		return false
	}) {
		t.Fatalf("%s: no answer to its subscribe with presence", w.name)
	}
	if got["type"] != "ack" {
		t.Fatalf("%s: subscribe with presence: got %v, want its ack", w.name, got)
	}
	return w
}

func (w *watcher) collect() {
	defer close(w.done)
	for {
		m, err := w.c.TryNext(time.Second)
		if err != nil {
			select {
			case <-w.c.Done():
				return // and everything queued was taken
			default:
				continue
			}
		}
		r := received{m: m, at: time.Now()}
		if m["type"] == "join" || m["type"] == "leave" {
			r.ev.Client, _ = m["client"].(string)
			r.ev.User, _ = m["user"].(string)
			r.ev.Node, _ = m["node"].(string)
		}
		w.mu.Lock()
		w.objs = append(w.objs, r)
		w.mu.Unlock()
	}
}

func (w *watcher) objects() []received {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.objs)
}

// events returns the joins or leaves (typ) of room, in arrival order, with
// their arrival times.
func (w *watcher) events(typ, room string) ([]presenceMember, []time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []presenceMember
	var at []time.Time
	for _, r := range w.objs {
		if r.m["type"] != typ || r.m["room"] != room {
			continue
		}
		out = append(out, r.ev)
		at = append(at, r.at)
	}
	return out, at
}

// waitEvents waits until w has at least one typ event for room of each of
// users, and returns theirs by user.
func (w *watcher) waitEvents(t *testing.T, typ, room string, users []string, timeout time.Duration) map[string][]presenceMember {
	t.Helper()
	var by map[string][]presenceMember
	var missing []string
	if !hubtest.Poll(timeout, func() bool {
		evs, _ := w.events(typ, room)
		by = map[string][]presenceMember{}
		for _, e := range evs {
			if slices.Contains(users, e.User) {
				by[e.User] = append(by[e.User], e)
			}
		}
		missing = missing[:0]
		for _, u := range users {
			if len(by[u]) == 0 {
				missing = append(missing, u)
			}
		}
		return len(missing) == 0
	}) {
		t.Fatalf("%s: after %v, no %s in %s for %d users: %v", w.name, timeout, typ, room, len(missing), missing[:min(len(missing), 10)])
	}
	return by
}

// checkOnce checks that w got exactly one typ event for room per user in
// want (user -> the client id it must carry), on node (when not empty), and
// none of that type for other users among them. others, when false, also
// requires that w got no typ event for any user outside want.
func (w *watcher) checkOnce(t *testing.T, typ, room string, want map[string]string, node string, others bool) {
	t.Helper()
	evs, _ := w.events(typ, room)
	count := map[string]int{}
	for _, e := range evs {
		id, ok := want[e.User]
		switch {
		case !ok:
			if !others {
				t.Errorf("%s: got %s %v, want none for that user", w.name, typ, e)
			}
			continue
		case e.Client != id:
			t.Errorf("%s: got %s %v, want client %s", w.name, typ, e, id)
		case node != "" && e.Node != node:
			t.Errorf("%s: got %s %v, want node %s", w.name, typ, e, node)
		}
		count[e.User]++
	}
	for _, u := range slices.Sorted(maps.Keys(want)) {
		if count[u] != 1 {
			t.Errorf("%s: got %d %ss of %s, want 1", w.name, count[u], typ, u)
		}
	}
}

// apiCall makes an HTTP request to n with the API key (none when key is
// empty); body is JSON-encoded, or sent as it is when a string.
func apiCall(n *node, method, path, key string, body any) (int, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, n.url(path), rd)
	if err != nil {
		return 0, nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// api is apiCall with the key; a 2xx reply is decoded into out.
func api(t *testing.T, n *node, method, path string, body, out any) int {
	t.Helper()
	code, resp, err := apiCall(n, method, path, presenceKey, body)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, n.id, err)
	}
	if code/100 == 2 && out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			t.Fatalf("%s %s on %s: %d %q: %v", method, path, n.id, code, resp, err)
		}
	}
	return code
}

type nodesReply struct {
	Nodes []struct {
		ID          string `json:"id"`
		Address     string `json:"address"`
		Version     string `json:"version"`
		Connections int    `json:"connections"`
		Rooms       int    `json:"rooms"`
		Ready       bool   `json:"ready"`
		Started     string `json:"started"`
	} `json:"nodes"`
}

func (r nodesReply) ids() []string {
	var out []string
	for _, n := range r.Nodes {
		out = append(out, n.ID)
	}
	return out
}

type roomEntry struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
}

type roomsReply struct {
	Rooms []roomEntry `json:"rooms"`
	Next  string      `json:"next"`
}

// allRooms pages through GET /v1/rooms on n, limit per page.
func allRooms(t *testing.T, n *node, limit int) (rooms []roomEntry, pages int) {
	t.Helper()
	cursor := ""
	for {
		var page roomsReply
		path := fmt.Sprintf("/v1/rooms?limit=%d&cursor=%s", limit, url.QueryEscape(cursor))
		if code := api(t, n, "GET", path, nil, &page); code != http.StatusOK {
			t.Fatalf("GET %s on %s: got %d, want 200", path, n.id, code)
		}
		if len(page.Rooms) > limit {
			t.Fatalf("GET %s: got %d rooms, want at most %d", path, len(page.Rooms), limit)
		}
		rooms = append(rooms, page.Rooms...)
		pages++
		if page.Next == "" {
			return rooms, pages
		}
		if pages > 1000 {
			t.Fatalf("GET /v1/rooms: more than 1000 pages; the cursor does not advance (%q)", page.Next)
		}
		cursor = page.Next
	}
}

// Three nodes, a member of one room on each: presence on any node lists
// all of them with their token's user and their node; join and leave
// events reach the presence subscriber on every node, once each; a member
// that did not ask for events gets none; presence answers forbidden for a
// room the token does not grant and bad_room for a bad name.
func presenceThreeNodes(t *testing.T, r *redisServer) {
	c := startPresenceCluster(t, r, "three", 3)
	const room = "lobby"
	var ws []*watcher
	everyone := map[string]string{}
	for _, n := range c.nodes {
		ws = append(ws, watch(t, n, "watch-"+n.id, room))
		everyone["watch-"+n.id] = n.id
	}
	users := []string{"alice", "bob", "carol"}
	members := make([]*hubtest.Client, len(users))
	for i, n := range c.nodes {
		members[i] = dialUser(t, n, users[i])
		members[i].Subscribe(room)
		everyone[users[i]] = n.id
	}

	// One join per member at every watcher, the same client id everywhere.
	ids := map[string]string{}
	for _, w := range ws {
		for u, evs := range w.waitEvents(t, "join", room, users, 10*time.Second) {
			if ids[u] == "" {
				ids[u] = evs[0].Client
			}
		}
	}
	if len(slices.Compact(slices.Sorted(maps.Values(ids)))) != len(users) {
		t.Fatalf("the members' client ids are not unique: %v", ids)
	}
	time.Sleep(500 * time.Millisecond) // a second join of anyone would be here now
	for _, w := range ws {
		for j, u := range users {
			w.checkOnce(t, "join", room, map[string]string{u: ids[u]}, c.nodes[j].id, true)
		}
	}

	// Presence lists all six on every node, over WebSocket and HTTP.
	for _, n := range c.nodes {
		asker := dialUser(t, n, "asker-"+n.id)
		rep := mustPresence(t, asker, room)
		if err := exactUsers(rep, everyone); err != nil {
			t.Errorf("presence on %s: %v", n.id, err)
		}
		for u, id := range ids {
			if got := clientsOf(rep)[u]; got != id {
				t.Errorf("presence on %s: %s has client %s, its join said %s", n.id, u, got, id)
			}
		}
		var hrep presenceReply
		if code := api(t, n, "GET", "/v1/presence?room="+room, nil, &hrep); code != http.StatusOK {
			t.Fatalf("GET /v1/presence on %s: got %d, want 200", n.id, code)
		}
		if err := exactUsers(hrep, everyone); err != nil || hrep.Room != room {
			t.Errorf("GET /v1/presence on %s: room %q: %v", n.id, hrep.Room, err)
		}
	}
	if code, body, err := apiCall(c.nodes[0], "GET", "/v1/presence?room="+room, "", nil); err != nil || code != http.StatusUnauthorized {
		t.Errorf("GET /v1/presence without the key: got %d %q (%v), want 401", code, body, err)
	}
	if code, body, err := apiCall(c.nodes[0], "GET", "/v1/presence?room=not%20a%20room", presenceKey, nil); err != nil ||
		code != http.StatusBadRequest || !strings.Contains(string(body), "bad_room") {
		t.Errorf("GET /v1/presence of a bad room name: got %d %q (%v), want 400 bad_room", code, body, err)
	}

	// A token that does not grant the room may not see who is in it.
	narrow := dialUser(t, c.nodes[1], "narrow", "elsewhere")
	if rep, err := askPresence(narrow, room); err != nil || rep.Type != "error" || rep.Code != "forbidden" {
		t.Errorf("presence of a room the token does not grant: got %+v (%v), want error forbidden", rep, err)
	}
	if rep, err := askPresence(dialUser(t, c.nodes[1], "wide"), "not a room!"); err != nil || rep.Type != "error" || rep.Code != "bad_room" {
		t.Errorf("presence of a bad room name: got %+v (%v), want error bad_room", rep, err)
	}

	// bob unsubscribes, carol's connection closes: one leave each, at every
	// watcher, with the client ids of their joins.
	members[1].Send(`{"type":"unsubscribe","room":%q,"id":"u"}`, room)
	if m := members[1].Next(10 * time.Second); m["type"] != "ack" || m["id"] != "u" {
		t.Fatalf("bob's unsubscribe: got %v, want its ack", m)
	}
	members[2].Conn().Close(websocket.StatusNormalClosure, "bye")
	for _, w := range ws {
		w.waitEvents(t, "leave", room, []string{"bob", "carol"}, 10*time.Second)
	}
	time.Sleep(500 * time.Millisecond)
	for _, w := range ws {
		w.checkOnce(t, "leave", room, map[string]string{"bob": ids["bob"]}, c.nodes[1].id, true)
		w.checkOnce(t, "leave", room, map[string]string{"carol": ids["carol"]}, c.nodes[2].id, true)
		if evs, _ := w.events("leave", room); len(evs) != 2 {
			t.Errorf("%s: got leaves %v, want bob's and carol's only", w.name, evs)
		}
	}
	delete(everyone, "bob")
	delete(everyone, "carol")
	for _, n := range c.nodes {
		asker := dialUser(t, n, "asker2-"+n.id)
		if err := exactUsers(mustPresence(t, asker, room), everyone); err != nil {
			t.Errorf("presence on %s after two left: %v", n.id, err)
		}
	}
	// alice did not ask for events: she got none of those joins and leaves.
	members[0].ExpectNothing(100 * time.Millisecond)
}

// A node with 100 members is killed: within HUB_NODE_TIMEOUT plus about a
// second (deadBound), presence on the others lists none of them, and each
// watcher (one per surviving node) gets exactly 100 leaves, one per entry,
// not one per live node.
func presenceKilledNode(t *testing.T, r *redisServer) {
	c := startPresenceCluster(t, r, "kill", 3)
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	const room, doomed = "crowd", 100
	ws := []*watcher{watch(t, b, "watch-b", room), watch(t, cn, "watch-c", room)}
	stay := map[string]string{"watch-b": b.id, "watch-c": cn.id, "stay-b": b.id, "stay-c": cn.id}
	dialUser(t, b, "stay-b").Subscribe(room)
	dialUser(t, cn, "stay-c").Subscribe(room)
	var users []string
	for i := range doomed {
		u := fmt.Sprintf("k%03d", i)
		users = append(users, u)
		dialUser(t, a, u).Send(`{"type":"subscribe","room":%q,"id":1}`, room)
	}
	ids := map[string]string{}
	for _, w := range ws {
		for u, evs := range w.waitEvents(t, "join", room, users, 20*time.Second) {
			if evs[0].Node != a.id {
				t.Fatalf("%s: got join %v, want node %s", w.name, evs[0], a.id)
			}
			ids[u] = evs[0].Client
		}
	}
	askers := []*hubtest.Client{dialUser(t, b, "asker-b"), dialUser(t, cn, "asker-c")}
	all := maps.Clone(stay)
	for _, u := range users {
		all[u] = a.id
	}
	if err := exactUsers(mustPresence(t, askers[0], room), all); err != nil {
		t.Fatalf("presence before the kill: %v", err)
	}

	killed := time.Now()
	a.signal(syscall.SIGKILL)
	a.wait(10 * time.Second)
	bound := deadBound
	for k, asker := range askers {
		var rep presenceReply
		var err error
		ok := hubtest.Poll(time.Until(killed.Add(bound)), func() bool {
			rep, err = askPresence(asker, room)
			return err == nil && rep.Type == "presence" && exactUsers(rep, stay) == nil
		})
		took := time.Since(killed)
		if !ok {
			t.Errorf("presence on %s %v after the kill (bound %v): %+v %v; differs from the survivors by: %v",
				c.nodes[k+1].id, took.Round(time.Millisecond), bound, rep.Type, err, exactUsers(rep, stay))
		} else {
			t.Logf("presence on %s lists only the survivors %v after the kill", c.nodes[k+1].id, took.Round(time.Millisecond))
		}
	}

	// Exactly one leave per entry at each watcher: wait for the hundred, then
	// a node timeout more, for any second round of them.
	for _, w := range ws {
		if !hubtest.Poll(20*time.Second, func() bool { evs, _ := w.events("leave", room); return len(evs) >= doomed }) {
			evs, _ := w.events("leave", room)
			t.Fatalf("%s: got %d leaves in 20s after the kill, want %d", w.name, len(evs), doomed)
		}
		_, at := w.events("leave", room)
		t.Logf("%s: leave 1 at %v, leave %d at %v after the kill", w.name,
			at[0].Sub(killed).Round(time.Millisecond), doomed, at[doomed-1].Sub(killed).Round(time.Millisecond))
	}
	time.Sleep(presenceTimeout + time.Second)
	for _, w := range ws {
		if evs, _ := w.events("leave", room); len(evs) != doomed {
			t.Errorf("%s: got %d leaves, want exactly %d (one per entry of the killed node)", w.name, len(evs), doomed)
		}
		w.checkOnce(t, "leave", room, ids, a.id, false)
	}
}

// mover is a member that moves when its node drains: the Go client, which
// reconnects through its list of nodes and subscribes again by itself.
type mover struct {
	user string
	to   *node // the node it moves to: the first of its other URLs
	c    *hubclient.Client
	ups  atomic.Int64 // times it connected
}

// A node is drained (SIGTERM): its members' leaves reach the watchers on
// the other nodes (well before a dead node's entries would time out), then
// their joins from the nodes they moved to; in the end presence equals the
// connected set exactly, and so does what the watchers' events add up to.
func presenceDrainedNode(t *testing.T, r *redisServer) {
	// A long node timeout: the leaves must come from the drain itself, not
	// from the others' clean-up of a node that went silent.
	c := startPresenceCluster(t, r, "drain", 3, "HUB_NODE_TIMEOUT=60s")
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	const room, movers = "stage", 30
	ws := []*watcher{watch(t, b, "watch-b", room), watch(t, cn, "watch-c", room)}
	want := map[string]string{"watch-b": b.id, "watch-c": cn.id}
	var tracked []string // the users the events are added up for
	for i := range 3 {
		u := fmt.Sprintf("stay-%d", i)
		dialUser(t, b, u).Subscribe(room)
		want[u] = b.id
		tracked = append(tracked, u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ms []*mover
	var users []string
	for i := range movers {
		m := &mover{user: fmt.Sprintf("m%02d", i), to: b}
		others := []string{b.wsURL(), cn.wsURL()}
		if i%2 == 1 {
			m.to, others = cn, []string{cn.wsURL(), b.wsURL()}
		}
		cl, err := hubclient.Dial(ctx, a.wsURL(), &hubclient.Options{
			URLs:       others,
			Token:      func(context.Context) (string, error) { return userToken(m.user), nil },
			MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
			OnState: func(s hubclient.State, _ int, _ string) {
				if s == hubclient.Connected {
					m.ups.Add(1)
				}
			},
		})
		if err != nil {
			t.Fatalf("mover %s: %v", m.user, err)
		}
		t.Cleanup(func() { cl.Close() })
		m.c = cl
		if _, err := cl.Subscribe(ctx, room, func(hubclient.Message) {}); err != nil {
			t.Fatalf("mover %s: subscribe: %v", m.user, err)
		}
		ms = append(ms, m)
		users = append(users, m.user)
		want[m.user] = a.id
	}
	tracked = append(tracked, users...)
	old := map[string]string{}
	for _, w := range ws {
		for u, evs := range w.waitEvents(t, "join", room, users, 20*time.Second) {
			old[u] = evs[0].Client
		}
	}
	asker := dialUser(t, b, "asker-b")
	if err := exactUsers(mustPresence(t, asker, room), want); err != nil {
		t.Fatalf("presence before the drain: %v", err)
	}

	drained := time.Now()
	a.signal(syscall.SIGTERM)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("the drained node exited %d, want 0", code)
	}
	t.Logf("drain: the node exited %v after SIGTERM", time.Since(drained).Round(time.Millisecond))
	for _, m := range ms {
		want[m.user] = m.to.id
	}
	hubtest.Eventually(t, 20*time.Second, func() bool {
		for _, m := range ms {
			if m.ups.Load() < 2 {
				return false
			}
		}
		return true
	}, "every mover to connect again")

	// At each watcher: a leave per old entry, and a join per mover from its
	// new node, with a new client id.
	fresh := map[string]string{} // user -> the client id on its new node
	for _, w := range ws {
		leaves := w.waitEvents(t, "leave", room, users, 15*time.Second)
		for u, evs := range leaves {
			if evs[0].Client != old[u] {
				t.Errorf("%s: got leave %v, want the old client %s", w.name, evs[0], old[u])
			}
		}
		hubtest.Eventually(t, 15*time.Second, func() bool {
			joins, _ := w.events("join", room)
			n := 0
			for _, e := range joins {
				if e.Client != old[e.User] && slices.Contains(users, e.User) {
					n++
					fresh[e.User] = e.Client
				}
			}
			return n >= movers
		}, "%s to see every mover join again", w.name)
	}
	time.Sleep(time.Second) // a duplicate would be here now
	for _, w := range ws {
		w.checkOnce(t, "leave", room, old, a.id, false)
		joins, joinAt := w.events("join", room)
		leaves, leaveAt := w.events("leave", room)
		count := map[string]int{}
		leftAt := map[string]time.Time{}
		for i, e := range leaves {
			leftAt[e.User] = leaveAt[i]
		}
		early := 0
		for i, e := range joins {
			if !slices.Contains(users, e.User) || e.Client == old[e.User] {
				continue
			}
			count[e.User]++
			if e.Client != fresh[e.User] || e.Node != want[e.User] {
				t.Errorf("%s: got join %v after the drain, want %s@%s(%s)", w.name, e, e.User, want[e.User], fresh[e.User])
			}
			if joinAt[i].Before(leftAt[e.User]) {
				early++
			}
		}
		for _, u := range users {
			if count[u] != 1 {
				t.Errorf("%s: got %d joins of %s after the drain, want 1", w.name, count[u], u)
			}
		}
		t.Logf("%s: %d leaves from the drained node (the last %v after SIGTERM), %d joins after; %d joins came before their user's leave",
			w.name, len(leaves), leaveAt[len(leaveAt)-1].Sub(drained).Round(time.Millisecond), movers, early)

		// The events, added up by client id (join adds, leave removes),
		// give what presence lists for the same users.
		set := map[string]presenceMember{}
		for _, r := range w.objects() {
			e := r.ev
			if r.m["room"] != room || !slices.Contains(tracked, e.User) {
				continue
			}
			switch r.m["type"] {
			case "join":
				set[e.Client] = e
			case "leave":
				delete(set, e.Client)
			}
		}
		rep := mustPresence(t, asker, room)
		listed := map[string]presenceMember{}
		for _, m := range rep.Members {
			if slices.Contains(tracked, m.User) {
				listed[m.Client] = m
			}
		}
		if !maps.Equal(set, listed) {
			t.Errorf("%s: the events add up to %v, presence lists %v", w.name, slices.Collect(maps.Values(set)), slices.Collect(maps.Values(listed)))
		}
	}
	for _, n := range []*node{b, cn} {
		asker := dialUser(t, n, "asker2-"+n.id)
		if err := exactUsers(mustPresence(t, asker, room), want); err != nil {
			t.Errorf("presence on %s after the drain: %v", n.id, err)
		}
	}
}

// Redis restarts without persistence: every presence entry and heartbeat
// is gone. Each node writes its own members' entries again, so presence,
// once it settles, lists exactly the live connections: no entry lost (a
// node taking the others for dead because their heartbeats vanished too),
// none stale (members that left while Redis was down).
func presenceRedisRestart(t *testing.T) {
	r := startRedisWith(t, "--appendonly", "no", "--save", "")
	c := startPresenceCluster(t, r, "restart", 3)
	const room, per = "phoenix", 10
	want := map[string]string{}
	members := map[string]*hubtest.Client{}
	for _, n := range c.nodes {
		for i := range per {
			u := fmt.Sprintf("%s-%d", n.id, i)
			cl := dialUser(t, n, u)
			cl.Subscribe(room)
			want[u], members[u] = n.id, cl
		}
	}
	var askers []*hubtest.Client
	for _, n := range c.nodes {
		askers = append(askers, dialUser(t, n, "asker-"+n.id))
	}
	for k, asker := range askers {
		took := waitPresence(t, asker, room, want, 10*time.Second)
		t.Logf("presence on %s lists the %d members %v after the last ack", c.nodes[k].id, len(want), took.Round(time.Millisecond))
	}

	r.stop(t)
	c.proxy.cut()
	for _, n := range c.nodes {
		n.waitStatus(http.StatusServiceUnavailable, 15*time.Second)
	}
	if rep, err := askPresence(askers[0], room); err != nil || rep.Type != "error" || rep.Code != "unavailable" {
		t.Errorf("presence while Redis is down: got %+v (%v), want error unavailable", rep, err)
	}
	// Five members leave while Redis is down: three on a, two on b.
	for _, u := range []string{"restart-a-0", "restart-a-1", "restart-a-2", "restart-b-0", "restart-b-1"} {
		members[u].CloseNow()
		delete(want, u)
	}
	for _, n := range c.nodes[:2] {
		conns := float64(per + 1 - 3)
		if n == c.nodes[1] {
			conns = per + 1 - 2
		}
		if !hubtest.Poll(10*time.Second, func() bool { return n.metric("hub_connections") == conns }) {
			t.Fatalf("node %s holds %v connections, want %v", n.id, n.metric("hub_connections"), conns)
		}
	}
	r.start(t)
	c.proxy.setUpstream(r.addr)
	restarted := time.Now()
	for _, n := range c.nodes {
		n.waitReady(30 * time.Second)
	}
	for k, asker := range askers {
		var rep presenceReply
		var err error
		if !hubtest.Poll(20*time.Second, func() bool {
			rep, err = askPresence(asker, room)
			return err == nil && rep.Type == "presence" && exactUsers(rep, want) == nil
		}) {
			t.Fatalf("presence on %s 20s after Redis came back: %+v %v: %v", c.nodes[k].id, rep.Type, err, exactUsers(rep, want))
		}
		t.Logf("presence on %s exact again %v after Redis came back", c.nodes[k].id, time.Since(restarted).Round(time.Millisecond))
	}
	// Settled means it stays so: past a node timeout, nobody taken for dead.
	time.Sleep(presenceTimeout + 2*time.Second)
	for k, asker := range askers {
		if err := exactUsers(mustPresence(t, asker, room), want); err != nil {
			t.Errorf("presence on %s a node timeout after it settled: %v", c.nodes[k].id, err)
		}
	}
	var nodes nodesReply
	if code := api(t, c.nodes[2], "GET", "/v1/nodes", nil, &nodes); code != http.StatusOK ||
		!slices.Equal(nodes.ids(), []string{"restart-a", "restart-b", "restart-c"}) {
		t.Errorf("GET /v1/nodes after the restart: got %d %v, want the three nodes", code, nodes.ids())
	}
	// And it works as before: a new member appears.
	dialUser(t, c.nodes[2], "late").Subscribe(room)
	want["late"] = c.nodes[2].id
	waitPresence(t, askers[0], room, want, 10*time.Second)
}

// A node's Redis subscription goes silent (its connections through a proxy
// of its own stop carrying bytes) while a member on another node leaves and
// another joins: the watcher on that node cannot receive those two events.
// Once its node has noticed and subscribed again, what the watcher knows
// must not be silently wrong (DESIGN: a lost subscription is reported to
// the members concerned, never silent): either its events add up to what
// presence lists, or it was told gap for the room, so that it asks again.
func presenceSubscriptionLoss(t *testing.T, r *redisServer) {
	c := &cluster{redis: r, proxy: newProxy(t, r.addr), prefix: uniquePrefix()}
	a := c.startNode(t, "loss-a", presenceEnv()...)
	own := newProxy(t, r.addr)
	b := startNode(t, "loss-b", append([]string{
		"HUB_REDIS_URL=redis://" + own.addr(), "HUB_REDIS_PREFIX=" + c.prefix,
		"HUB_REDIS_PROBE_INTERVAL=200ms", "HUB_REDIS_PROBE_TIMEOUT=2s",
	}, presenceEnv()...)...)
	a.waitReady(60 * time.Second)
	b.waitReady(60 * time.Second)
	const room = "quiet"
	w := watch(t, b, "watch-b", room)
	leaver := dialUser(t, a, "leaver")
	leaver.Subscribe(room)
	w.waitEvents(t, "join", room, []string{"leaver"}, 10*time.Second)

	own.silence()
	leaver.Conn().Close(websocket.StatusNormalClosure, "")
	dialUser(t, a, "joiner").Subscribe(room)
	asker := dialUser(t, a, "asker")
	waitPresence(t, asker, room, map[string]string{"watch-b": b.id, "joiner": a.id}, 10*time.Second)
	if !hubtest.Poll(20*time.Second, func() bool { return b.metric("hub_redis_silent_resets_total") >= 1 }) {
		t.Fatalf("node %s did not notice its silent subscription in 20s", b.id)
	}
	b.waitReady(30 * time.Second)
	time.Sleep(2 * time.Second) // whatever the node does once it is back

	// A client applies joins and leaves to its set, and replaces the set
	// with a snapshot (a presence object with no id).
	set := map[string]presenceMember{}
	gaps, snapshots := 0, 0
	for _, r := range w.objects() {
		switch r.m["type"] {
		case "join":
			set[r.ev.Client] = r.ev
		case "leave":
			delete(set, r.ev.Client)
		case "gap":
			gaps++
		case "presence":
			if _, answer := r.m["id"]; answer {
				continue
			}
			snapshots++
			set = map[string]presenceMember{}
			ms, _ := r.m["members"].([]any)
			for _, x := range ms {
				m, _ := x.(map[string]any)
				var e presenceMember
				e.Client, _ = m["client"].(string)
				e.User, _ = m["user"].(string)
				e.Node, _ = m["node"].(string)
				set[e.Client] = e
			}
		}
	}
	var knows []string
	for _, m := range set {
		knows = append(knows, m.User)
	}
	slices.Sort(knows)
	rep := mustPresence(t, asker, room)
	var listed []string
	for _, m := range rep.Members {
		listed = append(listed, m.User)
	}
	slices.Sort(listed)
	t.Logf("after the silent subscription: the watcher's events and snapshots add up to %v, presence lists %v (%d snapshots, %d gaps told)",
		knows, listed, snapshots, gaps)
	if snapshots == 0 {
		t.Errorf("the watcher on %s got no presence snapshot after its node's subscription came back", b.id)
	}
	if !slices.Equal(knows, listed) {
		t.Errorf("the watcher on %s missed events while its node's subscription was silent: "+
			"its joins, leaves and snapshots add up to %v, presence lists %v", b.id, knows, listed)
	}
}

// The operator's endpoints: GET /v1/nodes lists the three nodes (and drops
// a killed one within deadBound), GET /v1/rooms lists rooms whose members
// are only on other nodes, POST /v1/disconnect closes a user's connections
// on every node within a second with the code given, and POST
// /v1/unsubscribe takes a user out of a room on every node.
func presenceAdminHTTP(t *testing.T, r *redisServer) {
	c := startPresenceCluster(t, r, "http", 3)
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	for _, path := range []string{"/v1/nodes", "/v1/rooms", "/v1/presence?room=x"} {
		if code, body, err := apiCall(a, "GET", path, "", nil); err != nil || code != http.StatusUnauthorized {
			t.Errorf("GET %s without the key: got %d %q (%v), want 401", path, code, body, err)
		}
	}
	for _, path := range []string{"/v1/disconnect", "/v1/unsubscribe"} {
		if code, body, err := apiCall(a, "POST", path, "wrong-key", map[string]any{"user": "x", "room": "x"}); err != nil || code != http.StatusUnauthorized {
			t.Errorf("POST %s with a wrong key: got %d %q (%v), want 401", path, code, body, err)
		}
	}

	// Rooms: only-b has its member on b, only-c on c, pair one on a and one
	// on b. Asked on a, which has members only in pair.
	dialUser(t, b, "rb").Subscribe("only-b")
	dialUser(t, cn, "rc").Subscribe("only-c")
	dialUser(t, a, "pa").Subscribe("pair")
	dialUser(t, b, "pb").Subscribe("pair")
	wantRooms := []roomEntry{{"only-b", 1}, {"only-c", 1}, {"pair", 2}}
	var got []roomEntry
	subscribed := time.Now()
	if !hubtest.Poll(10*time.Second, func() bool { got, _ = allRooms(t, a, 100); return slices.Equal(got, wantRooms) }) {
		t.Fatalf("GET /v1/rooms on %s: got %v, want %v", a.id, got, wantRooms)
	}
	t.Logf("GET /v1/rooms lists the four members' rooms %v after the last ack", time.Since(subscribed).Round(time.Millisecond))
	if got, pages := allRooms(t, a, 1); !slices.Equal(got, wantRooms) || pages != 3 {
		t.Errorf("GET /v1/rooms on %s a room a page: got %v in %d pages, want %v in 3", a.id, got, pages, wantRooms)
	}

	// Nodes: the three, by id, with what each holds.
	type held struct{ conns, rooms int }
	wantHeld := map[string]held{a.id: {1, 1}, b.id: {2, 2}, cn.id: {1, 1}}
	var nodes nodesReply
	if !hubtest.Poll(10*time.Second, func() bool {
		nodes = nodesReply{}
		if api(t, b, "GET", "/v1/nodes", nil, &nodes) != http.StatusOK || len(nodes.Nodes) != 3 {
			return false
		}
		for _, n := range nodes.Nodes {
			if wantHeld[n.ID] != (held{n.Connections, n.Rooms}) {
				return false
			}
		}
		return true
	}) {
		t.Errorf("GET /v1/nodes: got %+v, want the three nodes holding (connections, rooms) %v", nodes, wantHeld)
	}
	if !slices.Equal(nodes.ids(), []string{a.id, b.id, cn.id}) {
		t.Errorf("GET /v1/nodes: got ids %v, want %v in that order", nodes.ids(), []string{a.id, b.id, cn.id})
	}
	for _, n := range nodes.Nodes {
		started, err := time.Parse(time.RFC3339, n.Started)
		if !n.Ready || n.Address == "" || n.Version == "" || err != nil || started.After(time.Now().Add(time.Second)) {
			t.Errorf("GET /v1/nodes: node %+v: want ready, an address, a version and a past start time (%v)", n, err)
		}
	}

	// Disconnect: dave on all three nodes, closed with 4100 "banned" within
	// a second; erin is left alone; frank, with no code given, gets 1008.
	daves := []*hubtest.Client{dialUser(t, a, "dave"), dialUser(t, b, "dave"), dialUser(t, cn, "dave")}
	daves[1].Subscribe("pair")
	erin := dialUser(t, a, "erin")
	franks := []*hubtest.Client{dialUser(t, b, "frank"), dialUser(t, cn, "frank")}
	var accepted struct{ Status string }
	if code := api(t, a, "POST", "/v1/disconnect", map[string]any{"user": "dave", "code": 4100, "reason": "banned"}, &accepted); code != http.StatusAccepted || accepted.Status != "accepted" {
		t.Fatalf("POST /v1/disconnect: got %d %+v, want 202 accepted", code, accepted)
	}
	at := time.Now()
	for k, d := range daves {
		select {
		case <-d.Done():
		case <-time.After(time.Until(at.Add(time.Second))):
			t.Errorf("dave's connection on %s is still open a second after the 202", c.nodes[k].id)
			continue
		}
		if code, reason := d.CloseStatus(time.Second); code != 4100 || reason != "banned" {
			t.Errorf("dave's connection on %s: got close %d %q, want 4100 %q", c.nodes[k].id, code, reason, "banned")
		}
	}
	t.Logf("POST /v1/disconnect: dave's three connections closed %v after the 202", time.Since(at).Round(time.Millisecond))
	if code := api(t, a, "POST", "/v1/disconnect", map[string]any{"user": "frank"}, nil); code != http.StatusAccepted {
		t.Fatalf("POST /v1/disconnect without a code: got %d, want 202", code)
	}
	for _, f := range franks {
		if code, _ := f.CloseStatus(5 * time.Second); code != websocket.StatusPolicyViolation {
			t.Errorf("frank: got close %d, want the default 1008", code)
		}
	}
	if isDone(erin) {
		t.Fatal("erin's connection was closed too")
	}
	waitPresence(t, erin, "pair", map[string]string{"pa": a.id, "pb": b.id}, 5*time.Second)
	for _, tc := range []struct {
		name string
		body any
	}{
		{"no user", map[string]any{"code": 4100}},
		{"code 1001", map[string]any{"user": "erin", "code": 1001}},
		{"code 4099", map[string]any{"user": "erin", "code": 4099}},
		{"code 5000", map[string]any{"user": "erin", "code": 5000}},
		{"a reason of 121 bytes", map[string]any{"user": "erin", "code": 4100, "reason": strings.Repeat("r", 121)}},
		{"not JSON", "user=erin"},
	} {
		if code, body, err := apiCall(b, "POST", "/v1/disconnect", presenceKey, tc.body); err != nil || code != http.StatusBadRequest {
			t.Errorf("POST /v1/disconnect, %s: got %d %q (%v), want 400", tc.name, code, body, err)
		}
	}
	if code := api(t, b, "POST", "/v1/disconnect", map[string]any{"user": "nobody", "code": 4999, "reason": strings.Repeat("r", 120)}, nil); code != http.StatusAccepted {
		t.Errorf("POST /v1/disconnect with code 4999 and a reason of 120 bytes: got %d, want 202", code)
	}
	if isDone(erin) {
		t.Fatal("erin's connection was closed by a refused disconnect")
	}

	// Unsubscribe: gina, in ops on a and on b, is taken out on both; the
	// watcher on c sees her two leaves; her connections stay open.
	w := watch(t, cn, "watch-ops", "ops")
	ginas := []*hubtest.Client{dialUser(t, a, "gina"), dialUser(t, b, "gina")}
	for _, g := range ginas {
		g.Subscribe("ops")
	}
	ginaEvents := func(typ string) []presenceMember {
		evs, _ := w.events(typ, "ops")
		return slices.DeleteFunc(evs, func(e presenceMember) bool { return e.User != "gina" })
	}
	hubtest.Eventually(t, 10*time.Second, func() bool { return len(ginaEvents("join")) >= 2 }, "the watcher to see gina join twice")
	time.Sleep(300 * time.Millisecond)
	joins := ginaEvents("join")
	if len(joins) != 2 {
		t.Fatalf("the watcher got gina's joins %v, want two", joins)
	}
	if code := api(t, cn, "POST", "/v1/unsubscribe", map[string]any{"user": "gina", "room": "ops"}, nil); code != http.StatusAccepted {
		t.Fatalf("POST /v1/unsubscribe: got %d, want 202", code)
	}
	for k, g := range ginas {
		if m := g.NextOfType("unsubscribed", 5*time.Second); m["room"] != "ops" || m["code"] != "forbidden" {
			t.Errorf("gina on %s: got %v, want unsubscribed from ops, code forbidden", c.nodes[k].id, m)
		}
	}
	hubtest.Eventually(t, 10*time.Second, func() bool { return len(ginaEvents("leave")) >= 2 }, "the watcher to see gina leave twice")
	time.Sleep(300 * time.Millisecond)
	leaves, _ := w.events("leave", "ops")
	joined := []string{joins[0].Client, joins[1].Client}
	left := []string{}
	for _, e := range leaves {
		left = append(left, e.Client)
		if e.User != "gina" {
			t.Errorf("after POST /v1/unsubscribe: got leave %v, want gina's only", e)
		}
	}
	slices.Sort(joined)
	slices.Sort(left)
	if !slices.Equal(joined, left) {
		t.Errorf("gina's leaves carry clients %v, her joins %v", left, joined)
	}
	if err := exactUsers(mustPresence(t, erin, "ops"), map[string]string{"watch-ops": cn.id}); err != nil {
		t.Errorf("presence of ops after gina was taken out: %v", err)
	}
	for _, g := range ginas {
		if isDone(g) {
			t.Error("gina's connection was closed; POST /v1/unsubscribe takes her out of the room only")
		}
	}

	// c is killed: /v1/nodes drops it within deadBound, /v1/rooms
	// forgets only-c once its entries are removed.
	killed := time.Now()
	cn.signal(syscall.SIGKILL)
	cn.wait(10 * time.Second)
	if !hubtest.Poll(time.Until(killed.Add(deadBound)), func() bool {
		nodes = nodesReply{}
		return api(t, a, "GET", "/v1/nodes", nil, &nodes) == http.StatusOK && slices.Equal(nodes.ids(), []string{a.id, b.id})
	}) {
		t.Errorf("GET /v1/nodes %v after %s was killed: got %v, want %v", time.Since(killed).Round(time.Millisecond), cn.id, nodes.ids(), []string{a.id, b.id})
	} else {
		t.Logf("GET /v1/nodes dropped the killed node %v after the kill", time.Since(killed).Round(time.Millisecond))
	}
	wantRooms = []roomEntry{{"only-b", 1}, {"pair", 2}}
	if !hubtest.Poll(time.Until(killed.Add(deadBound)), func() bool {
		got, _ = allRooms(t, a, 100)
		return slices.Equal(got, wantRooms)
	}) {
		t.Errorf("GET /v1/rooms after %s was killed: got %v, want %v", cn.id, got, wantRooms)
	}
}

// latencies summarises delivery delays.
func latencies(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		return s[min(len(s)-1, int(p*float64(len(s))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(s), q(0.5), q(0.99), s[len(s)-1].Round(10*time.Microsecond))
}

// A room of 10,000 members over three nodes (light connections from this
// process: 5,000 on a, 2,499 on b and on c, and a watcher on each of b and
// c): presence
// answers HUB_PRESENCE_LIMIT members and the count of all. Then a, with
// 5,000 of them, is killed while a publisher on c publishes to the room at a
// steady rate: both watchers get every accepted message once, in order,
// and exactly 5,000 leaves. The delivery delays during the leave storm are
// logged, not asserted.
func TestPresenceTenThousandMembers(t *testing.T) {
	const (
		room          = "arena"
		onA, onBC     = 5000, 2499 // light members on a, and on b and on c
		total         = onA + 2*onBC + 2
		limit         = 700
		rate          = 5 // publishes per second: 5 x 10,000 deliveries a second, which race-built nodes on two cores keep up with
		dialers       = 64
		subscribeWait = 60 * time.Second
	)
	r := startRedis(t)
	c := startPresenceCluster(t, r, "big", 3, fmt.Sprintf("HUB_PRESENCE_LIMIT=%d", limit),
		"HUB_PING_INTERVAL=1h", "HUB_LOG_LEVEL=info", "HUB_DRAIN_TIMEOUT=20s")
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]

	// The light members: a user each, subscribed, never read again (Discard
	// empties their sockets now and then).
	type job struct {
		n    *node
		user string
	}
	var jobs []job
	for i := range onA {
		jobs = append(jobs, job{a, fmt.Sprintf("a%04d", i)})
	}
	for i := range onBC {
		jobs = append(jobs, job{b, fmt.Sprintf("b%04d", i)}, job{cn, fmt.Sprintf("c%04d", i)})
	}
	lights := make([]*hubtest.Light, len(jobs))
	t.Cleanup(func() {
		for _, l := range lights {
			if l != nil {
				l.Close()
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	sem := make(chan struct{}, dialers)
	for i, jb := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			l, err := hubtest.DialLight(jb.n.addr, "/ws?token="+userToken(jb.user), "", 20*time.Second)
			if err == nil {
				lights[i] = l
				err = l.Send(fmt.Sprintf(`{"type":"subscribe","room":%q,"id":1}`, room))
			}
			if err == nil {
				var p []byte
				if p, err = l.Next(subscribeWait); err == nil && !bytes.HasPrefix(p, []byte(`{"type":"ack"`)) {
					err = fmt.Errorf("subscribe: got %q, want its ack", p)
				}
			}
			if err != nil {
				failed.Add(1)
				err = fmt.Errorf("%s on %s: %w", jb.user, jb.n.id, err)
				firstErr.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d light members failed to connect and subscribe; the first: %v", f, len(jobs), *firstErr.Load())
	}
	t.Logf("%d light members connected and subscribed in %v", len(jobs), time.Since(start).Round(time.Millisecond))
	survivors := lights[onA:]
	stopSweep := make(chan struct{})
	sweepDone := make(chan struct{})
	var ended atomic.Int64
	go func() { // keeps b's and c's members' sockets from filling; counts any that end
		defer close(sweepDone)
		gone := make([]bool, len(survivors))
		for {
			select {
			case <-stopSweep:
				return
			case <-time.After(time.Second):
			}
			for i, l := range survivors {
				if _, err := l.Discard(); err != nil && !gone[i] {
					gone[i] = true
					ended.Add(1)
				}
			}
		}
	}()
	defer func() { close(stopSweep); <-sweepDone }()

	ws := []*watcher{watch(t, b, "watch-b", room), watch(t, cn, "watch-c", room)}
	asker := dialUser(t, cn, "asker")
	var rep presenceReply
	hubtest.Poll(20*time.Second, func() bool { rep = mustPresence(t, asker, room); return rep.Count == total })
	askedAt := time.Now()
	rep = mustPresence(t, asker, room)
	t.Logf("presence of %d members answered in %v", rep.Count, time.Since(askedAt).Round(time.Microsecond))
	if rep.Count != total || len(rep.Members) != limit {
		t.Fatalf("presence: got count %d and %d members, want count %d and %d members (HUB_PRESENCE_LIMIT)", rep.Count, len(rep.Members), total, limit)
	}
	seen := map[string]bool{}
	for _, m := range rep.Members {
		if seen[m.Client] || m.User == "" || !slices.Contains([]string{a.id, b.id, cn.id}, m.Node) {
			t.Fatalf("presence: member %v is listed twice or lacks a user or a node of the cluster", m)
		}
		seen[m.Client] = true
	}
	var hrep presenceReply
	if code := api(t, b, "GET", "/v1/presence?room="+room, nil, &hrep); code != http.StatusOK || hrep.Count != total || len(hrep.Members) != limit {
		t.Errorf("GET /v1/presence: got %d, count %d, %d members; want 200, %d, %d", code, hrep.Count, len(hrep.Members), total, limit)
	}
	if rooms, _ := allRooms(t, a, 100); !slices.Equal(rooms, []roomEntry{{room, total}}) {
		t.Errorf("GET /v1/rooms: got %v, want %s with %d members", rooms, room, total)
	}

	// The publisher: on c, at a steady rate whatever each publish takes
	// (up to 32 in flight), each message stamped with when it was sent.
	var pmu sync.Mutex
	sentAt := map[int]time.Time{} // accepted publishes
	refused := map[int]int{}
	stopPub, pubDone := make(chan struct{}), make(chan struct{})
	pubClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	defer pubClient.CloseIdleConnections()
	go func() {
		defer close(pubDone)
		var inflight sync.WaitGroup
		defer inflight.Wait()
		slots := make(chan struct{}, 32)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			case <-tick.C:
			}
			slots <- struct{}{}
			inflight.Go(func() {
				defer func() { <-slots }()
				at := time.Now()
				body, _ := json.Marshal(map[string]any{"room": room, "data": i})
				req, _ := http.NewRequest("POST", cn.url("/v1/publish"), bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+presenceKey)
				req.Header.Set("Content-Type", "application/json")
				code := 0
				if resp, err := pubClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				pmu.Lock()
				defer pmu.Unlock()
				if code == http.StatusAccepted {
					sentAt[i] = at
				} else {
					refused[code]++
				}
			})
		}
	}()
	time.Sleep(2 * time.Second) // before the kill: the baseline

	killed := time.Now()
	a.signal(syscall.SIGKILL)
	a.wait(10 * time.Second)
	stormEnd := map[string]time.Time{}
	for _, w := range ws {
		if !hubtest.Poll(60*time.Second, func() bool { evs, _ := w.events("leave", room); return len(evs) >= onA }) {
			evs, _ := w.events("leave", room)
			gaps := 0
			for _, r := range w.objects() {
				if r.m["type"] == "gap" {
					gaps++
				}
			}
			t.Fatalf("%s: got %d leaves in 60s after the kill, want %d (and %d gaps)", w.name, len(evs), onA, gaps)
		}
		_, at := w.events("leave", room)
		stormEnd[w.name] = at[onA-1]
		t.Logf("%s: leave storm from %v to %v after the kill", w.name, at[0].Sub(killed).Round(time.Millisecond), at[onA-1].Sub(killed).Round(time.Millisecond))
	}
	var after presenceReply
	var asked []string // what each request saw, and how long it took
	if hubtest.Poll(30*time.Second, func() bool {
		at := time.Now()
		after = mustPresence(t, asker, room)
		asked = append(asked, fmt.Sprintf("%v: %d in %v", at.Sub(killed).Round(time.Millisecond), after.Count, time.Since(at).Round(time.Millisecond)))
		return after.Count == total-onA
	}) {
		t.Logf("presence counts the %d survivors %v after the kill; requests: %v", after.Count, time.Since(killed).Round(time.Millisecond), asked)
	} else {
		t.Errorf("presence after the kill: got count %d, want %d", after.Count, total-onA)
	}
	time.Sleep(2 * time.Second) // after the storm
	close(stopPub)
	<-pubDone
	pmu.Lock()
	defer pmu.Unlock()
	if len(refused) > 0 {
		t.Logf("publishes refused (status: count): %v", refused)
	}
	if len(sentAt) < rate {
		t.Fatalf("only %d publishes accepted", len(sentAt))
	}
	for _, w := range ws {
		msgs := func() []received {
			var out []received
			for _, r := range w.objects() {
				if r.m["type"] == "message" && r.m["room"] == room {
					out = append(out, r)
				}
			}
			return out
		}
		if !hubtest.Poll(30*time.Second, func() bool { return len(msgs()) >= len(sentAt) }) {
			t.Errorf("%s: got %d messages, want the %d accepted", w.name, len(msgs()), len(sentAt))
		}
		// Every accepted publish exactly once, in offset order (the
		// publishes overlap, so offset order is the room's order).
		got := msgs()
		seen := map[int]int{}
		var base, storm, rest []time.Duration
		for k, r := range got {
			f, _ := r.m["data"].(float64)
			i := int(f)
			seen[i]++
			if k > 0 {
				prev, _ := got[k-1].m["offset"].(float64)
				if off, _ := r.m["offset"].(float64); off != prev+1 {
					t.Errorf("%s: message %d (publish %d) has offset %v after %v: not in offset order, or one is missing", w.name, k, i, off, prev)
				}
			}
			at, ok := sentAt[i]
			if !ok {
				t.Errorf("%s: got publish %d, which was not accepted", w.name, i)
				continue
			}
			lat := r.at.Sub(at)
			switch {
			case at.Before(killed):
				base = append(base, lat)
			case at.Before(stormEnd[w.name]):
				storm = append(storm, lat)
			default:
				rest = append(rest, lat)
			}
		}
		for i := range sentAt {
			if seen[i] != 1 {
				t.Errorf("%s: got publish %d %d times, want once", w.name, i, seen[i])
			}
		}
		t.Logf("%s: delivery delay (HTTP publish on %s to arrival) at %d/s: before the kill %s; during the leave storm %s; after it %s",
			w.name, cn.id, rate, latencies(base), latencies(storm), latencies(rest))
	}

	// Exactly one leave per member of the killed node, no more after a
	// node timeout, and none for the survivors.
	time.Sleep(presenceTimeout + time.Second)
	for _, w := range ws {
		evs, _ := w.events("leave", room)
		users := map[string]int{}
		bad := 0
		for _, e := range evs {
			users[e.User]++
			if e.Node != a.id || !strings.HasPrefix(e.User, "a") {
				bad++
			}
		}
		if len(evs) != onA || len(users) != onA || bad != 0 {
			t.Errorf("%s: got %d leaves of %d users, %d not of a member of %s; want exactly %d, one per member of the killed node",
				w.name, len(evs), len(users), bad, a.id, onA)
		}
	}
	if n := ended.Load(); n != 0 {
		t.Errorf("%d members on %s and %s lost their connection", n, b.id, cn.id)
	}
	if rep := mustPresence(t, asker, room); rep.Count != total-onA {
		t.Errorf("presence a node timeout after the storm: got count %d, want %d", rep.Count, total-onA)
	}
}
