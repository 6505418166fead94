package pubsub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Presence in Redis. A room's entries live under its hash tag:
//
//	{prefix room}:p:<origin>  hash   client -> user, one per node process
//	{prefix room}:p           hash   origin -> node id, the processes with entries
//	{prefix room}:w           set    origins with members that want events
//
// and the cluster view under the tag {prefix !nodes}:
//
//	{prefix !nodes}           zset   origin -> time of its last heartbeat (Redis's clock, ms)
//	{prefix !nodes}:i:<origin> string the heartbeat's NodeInfo, expiring after NodeTimeout
//	{prefix !nodes}:r:<origin> set    rooms where that process has entries
//	{prefix !nodes}:c:<origin> string who removes a dead process's entries
//
// A join costs one script call on the room's shard (plus one SADD when the
// node's first member joins the room); a leave one script call. Each
// publishes an event on the room's channel only when the room's watch set
// is not empty.

// joinScript adds entries. KEYS: entries, origins, watchers. ARGV: origin,
// node, channel, then client, user pairs. It returns how many were new.
var joinScript = redis.NewScript(joinSource)

const joinSource = `
local added = {}
for i = 4, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) == 1 then
    added[#added+1] = {ARGV[i], ARGV[i+1]}
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if #added > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  for i = 1, #added, 500 do
    redis.call('PUBLISH', ARGV[3], 'p' .. cjson.encode({k='j', n=ARGV[2], m={unpack(added, i, math.min(i+499, #added))}}))
  end
end
return #added
`

// leaveScript removes entries. KEYS and ARGV as joinScript's, with clients
// only after the channel. It returns how many were there.
var leaveScript = redis.NewScript(leaveSource)

const leaveSource = `
local gone = {}
for i = 4, #ARGV do
  local u = redis.call('HGET', KEYS[1], ARGV[i])
  if u then
    redis.call('HDEL', KEYS[1], ARGV[i])
    gone[#gone+1] = {ARGV[i], u}
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
if #gone > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  for i = 1, #gone, 500 do
    redis.call('PUBLISH', ARGV[3], 'p' .. cjson.encode({k='l', n=ARGV[2], m={unpack(gone, i, math.min(i+499, #gone))}}))
  end
end
return #gone
`

// purgeScript removes every entry of one process from a room, with their
// leaves. KEYS: its entries, origins, watchers. ARGV: origin, channel.
var purgeScript = redis.NewScript(purgeSource)

const purgeSource = `
local node = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
local gone = {}
for i = 1, #all, 2 do gone[#gone+1] = {all[i], all[i+1]} end
if #gone > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  for i = 1, #gone, 500 do
    redis.call('PUBLISH', ARGV[2], 'p' .. cjson.encode({k='l', n=node, m={unpack(gone, i, math.min(i+499, #gone))}}))
  end
end
return #gone
`

// readScript counts a room's entries and returns at most ARGV[1] of them
// as client, user, node triples. KEYS: origins (the entries' keys are it
// plus ':' and the origin, in the same slot).
var readScript = redis.NewScript(`
local procs = redis.call('HGETALL', KEYS[1])
local limit = tonumber(ARGV[1]) * 3
local total, out = 0, {}
for i = 1, #procs, 2 do
  local k = KEYS[1] .. ':' .. procs[i]
  total = total + redis.call('HLEN', k)
  local cursor = '0'
  while #out < limit do
    local r = redis.call('HSCAN', k, cursor, 'COUNT', 500)
    cursor = r[1]
    for j = 1, #r[2], 2 do
      if #out < limit then
        out[#out+1] = r[2][j]; out[#out+1] = r[2][j+1]; out[#out+1] = procs[i+1]
      end
    end
    if cursor == '0' then break end
  end
end
return {total, out}
`)

// heartbeatScript records this process's heartbeat. KEYS: nodes, its info.
// ARGV: origin, info, timeout (ms), the info keys' prefix. It returns
// whether the process was in the view before, the live nodes' infos, and up
// to 16 processes whose heartbeat is older than the timeout.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout = tonumber(ARGV[3])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', timeout)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - timeout, '+inf')
local infos = {}
for _, o in ipairs(live) do infos[#infos+1] = redis.call('GET', ARGV[4] .. o) or '' end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - timeout), 'LIMIT', 0, 16)
if known then known = 1 else known = 0 end
return {known, infos, dead}
`)

// claimScript lets one live process clean up after a dead one. KEYS: nodes,
// the claim. ARGV: dead origin, timeout (ms), this origin, claim TTL (ms).
var claimScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) >= now - tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return 1 end
return 0
`)

// roomsScript returns the rooms where live processes have entries. KEYS:
// nodes. ARGV: timeout (ms), the room sets' prefix.
var roomsScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
if #live == 0 then return {} end
local keys = {}
for i, o in ipairs(live) do keys[i] = ARGV[2] .. o end
return redis.call('SUNION', unpack(keys))
`)

// nodesScript returns the live nodes' infos. KEYS: nodes. ARGV: timeout
// (ms), the info keys' prefix.
var nodesScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local infos = {}
for _, o in ipairs(live) do infos[#infos+1] = redis.call('GET', ARGV[2] .. o) or '' end
return infos
`)

var presenceScripts = []*redis.Script{joinScript, leaveScript, purgeScript, readScript,
	heartbeatScript, claimScript, roomsScript, nodesScript, joinScriptSharded, leaveScriptSharded, purgeScriptSharded}

// Sharded versions publish with SPUBLISH (cluster mode).
var (
	joinScriptSharded  = shardedScript(joinSource)
	leaveScriptSharded = shardedScript(leaveSource)
	purgeScriptSharded = shardedScript(purgeSource)
)

// redisPresence is the Redis broker's presence state: what this process
// wants Redis to hold (its own entries and watches), what Redis holds as
// far as it knows, and the rooms that differ.
type redisPresence struct {
	mu     sync.Mutex
	rooms  map[string]*presRoom
	dirty  map[string]struct{}
	kick   chan struct{}
	left   bool          // LeaveCluster began: nothing more is written
	idle   chan struct{} // closed and replaced whenever no sync is in flight and nothing is dirty
	busy   bool
	beat   atomic.Int64 // unix nanos of the last heartbeat written
	beaten atomic.Bool  // a heartbeat was ever written

	cleaning sync.Map // dead origins being cleaned up by this process

	writes    *prometheus.CounterVec
	cleanups  prometheus.Counter
	announces prometheus.Counter
}

type presRoom struct {
	want, have           map[string]string // client -> user
	watch, watchHave     bool
	listed, listedFailed bool
}

func (p *redisPresence) init(reg prometheus.Registerer) error {
	p.rooms = make(map[string]*presRoom)
	p.dirty = make(map[string]struct{})
	p.kick = make(chan struct{}, 1)
	p.idle = make(chan struct{})
	p.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hub_presence_writes_total",
		Help: "Presence writes this node sent to Redis, by kind (join, leave, purge), and their outcome.",
	}, []string{"kind", "outcome"})
	p.cleanups = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hub_presence_cleanups_total",
		Help: "Dead nodes whose presence entries this node removed.",
	})
	p.announces = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hub_presence_announces_total",
		Help: "Times this node announced all its presence entries again (Redis lost them, or the node was cut off past the node timeout).",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{p.writes, p.cleanups, p.announces} {
			if err := reg.Register(c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *redisPresence) roomLocked(room string) *presRoom {
	pr := p.rooms[room]
	if pr == nil {
		pr = &presRoom{want: make(map[string]string), have: make(map[string]string)}
		p.rooms[room] = pr
	}
	return pr
}

func (p *redisPresence) markLocked(room string) {
	p.dirty[room] = struct{}{}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Join adds m to room's presence, in the background.
func (r *Redis) Join(room string, m Member) {
	p := &r.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roomLocked(room).want[m.Client] = m.User
	p.markLocked(room)
}

// Leave removes m from room's presence, in the background.
func (r *Redis) Leave(room string, m Member) {
	p := &r.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr := p.rooms[room]; pr != nil {
		delete(pr.want, m.Client)
		p.markLocked(room)
	}
}

// Watch records that this node has members that want room's events.
func (r *Redis) Watch(room string) { r.setWatch(room, true) }

// Unwatch records that no member of this node wants room's events.
func (r *Redis) Unwatch(room string) { r.setWatch(room, false) }

func (r *Redis) setWatch(room string, on bool) {
	p := &r.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.roomLocked(room)
	pr.watch = on
	p.markLocked(room)
}

// keys of presence.
func (r *Redis) entriesKey(room, origin string) string {
	return r.cfg.Prefix + "{" + room + "}:p:" + origin
}
func (r *Redis) originsKey(room string) string { return r.cfg.Prefix + "{" + room + "}:p" }
func (r *Redis) watchKey(room string) string   { return r.cfg.Prefix + "{" + room + "}:w" }
func (r *Redis) nodesKey() string              { return r.cfg.Prefix + "{!nodes}" }
func (r *Redis) infoKey(origin string) string  { return r.nodesKey() + ":i:" + origin }
func (r *Redis) nodeRoomsKey(origin string) string {
	return r.nodesKey() + ":r:" + origin
}
func (r *Redis) claimKey(origin string) string { return r.nodesKey() + ":c:" + origin }

func (r *Redis) presScript(s *redis.Script) *redis.Script {
	if r.mode != cluster {
		return s
	}
	switch s {
	case joinScript:
		return joinScriptSharded
	case leaveScript:
		return leaveScriptSharded
	case purgeScript:
		return purgeScriptSharded
	}
	return s
}

// maxPresenceRooms bounds the rooms one presence round trip writes.
const maxPresenceRooms = 256

// presenceLoop writes this process's presence changes to Redis, as many
// rooms per round trip as are dirty (up to maxPresenceRooms), until ctx ends.
// A write that fails is tried again (every write is idempotent: a join of
// an entry already there, or a leave of one gone, changes nothing and
// publishes nothing).
func (r *Redis) presenceLoop(ctx context.Context) {
	p := &r.pres
	backoff := 100 * time.Millisecond
	for {
		p.mu.Lock()
		if len(p.dirty) == 0 || p.left {
			p.busy = false
			close(p.idle)
			p.idle = make(chan struct{})
			p.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
			}
			continue
		}
		p.busy = true
		p.mu.Unlock()
		if r.syncPresence(ctx) {
			backoff = 100 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// presWrite is one room's share of a presence round trip.
type presWrite struct {
	room                 string
	joins                map[string]string
	leaves               []string
	watchOn, watchOff    bool
	list, unlist         bool
	joinCmd, leaveCmd    *redis.Cmd
	listCmd, unlistCmd   *redis.Cmd
	watchCmd, unwatchCmd *redis.Cmd
}

// syncPresence writes one round trip of dirty rooms and reports whether it
// went through.
func (r *Redis) syncPresence(ctx context.Context) bool {
	p := &r.pres
	p.mu.Lock()
	var writes []*presWrite
	for room := range p.dirty {
		if len(writes) == maxPresenceRooms {
			break
		}
		delete(p.dirty, room)
		pr := p.rooms[room]
		if pr == nil {
			continue
		}
		w := &presWrite{room: room, joins: make(map[string]string)}
		for c, u := range pr.want {
			if h, ok := pr.have[c]; !ok || h != u {
				w.joins[c] = u
			}
		}
		for c := range pr.have {
			if _, ok := pr.want[c]; !ok {
				w.leaves = append(w.leaves, c)
			}
		}
		w.watchOn = pr.watch && !pr.watchHave
		w.watchOff = !pr.watch && pr.watchHave
		w.list = len(pr.want) > 0 && !pr.listed
		w.unlist = len(pr.want) == 0 && pr.listed
		if len(w.joins) == 0 && len(w.leaves) == 0 && !w.watchOn && !w.watchOff && !w.list && !w.unlist {
			if len(pr.want) == 0 && len(pr.have) == 0 && !pr.watch && !pr.watchHave && !pr.listed {
				delete(p.rooms, room)
			}
			continue
		}
		writes = append(writes, w)
	}
	p.mu.Unlock()
	if len(writes) == 0 {
		return true
	}

	origin, node := r.cfg.Origin, r.cfg.NodeID
	pipe := r.client.Pipeline()
	for _, w := range writes {
		keys := []string{r.entriesKey(w.room, origin), r.originsKey(w.room), r.watchKey(w.room)}
		ch := r.channel(w.room)
		if w.list {
			w.listCmd = process(pipe, "sadd", r.nodeRoomsKey(origin), w.room)
		}
		if w.watchOn {
			w.watchCmd = process(pipe, "sadd", r.watchKey(w.room), origin)
		}
		if len(w.joins) > 0 {
			args := []any{origin, node, ch}
			for c, u := range w.joins {
				args = append(args, c, u)
			}
			w.joinCmd = evalSha(pipe, r.presScript(joinScript), keys, args...)
		}
		if len(w.leaves) > 0 {
			args := []any{origin, node, ch}
			for _, c := range w.leaves {
				args = append(args, c)
			}
			w.leaveCmd = evalSha(pipe, r.presScript(leaveScript), keys, args...)
		}
		if w.watchOff {
			w.unwatchCmd = process(pipe, "srem", r.watchKey(w.room), origin)
		}
		if w.unlist {
			w.unlistCmd = process(pipe, "srem", r.nodeRoomsKey(origin), w.room)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	pipe.Exec(ctx)

	ok, noscript := true, false
	failed := func(cmd *redis.Cmd) bool {
		if cmd == nil {
			return false
		}
		if err := cmd.Err(); err != nil {
			if redis.HasErrorPrefix(err, "NOSCRIPT") {
				noscript = true
			}
			return true
		}
		return false
	}
	count := func(kind string, cmd *redis.Cmd) {
		if cmd == nil {
			return
		}
		outcome := "ok"
		if cmd.Err() != nil {
			outcome = "failed"
		}
		p.writes.WithLabelValues(kind, outcome).Inc()
	}
	p.mu.Lock()
	for _, w := range writes {
		count("join", w.joinCmd)
		count("leave", w.leaveCmd)
		pr := p.rooms[w.room]
		if pr == nil {
			continue
		}
		bad := false
		if failed(w.listCmd) {
			bad = true
		} else if w.list {
			pr.listed = true
		}
		if failed(w.watchCmd) {
			bad = true
		} else if w.watchOn {
			pr.watchHave = true
		}
		if failed(w.joinCmd) {
			bad = true
		} else {
			for c, u := range w.joins {
				pr.have[c] = u
			}
		}
		if failed(w.leaveCmd) {
			bad = true
		} else {
			for _, c := range w.leaves {
				delete(pr.have, c)
			}
		}
		if failed(w.unwatchCmd) {
			bad = true
		} else if w.watchOff {
			pr.watchHave = false
		}
		if failed(w.unlistCmd) {
			bad = true
		} else if w.unlist {
			pr.listed = false
		}
		// Whatever changed meanwhile, or failed, is written next time.
		p.dirty[w.room] = struct{}{}
		if bad {
			ok = false
		}
	}
	p.mu.Unlock()
	if noscript {
		r.loadScripts(ctx)
	}
	return ok
}

// announceAll forgets what Redis holds of this process's presence, so that
// every entry and watch is written again.
func (r *Redis) announceAll() {
	p := &r.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	for room, pr := range p.rooms {
		clear(pr.have)
		pr.watchHave, pr.listed = false, false
		p.markLocked(room)
	}
	p.announces.Inc()
}

// presenceReady reports why this node's heartbeat is not in the cluster
// view, or nil.
func (r *Redis) presenceReady() error {
	if !r.pres.beaten.Load() {
		return errors.New("presence: heartbeat not written yet")
	}
	age := time.Since(time.Unix(0, r.pres.beat.Load()))
	if age > max(2*time.Second, r.cfg.NodeTimeout/2) {
		return fmt.Errorf("presence: heartbeat not written for %s: this node is missing from the cluster view", age.Round(100*time.Millisecond))
	}
	return nil
}

// heartbeatLoop writes this process's heartbeat each second, keeps the
// cluster view, announces this process's presence again when Redis no
// longer knew it, and cleans up after dead processes.
func (r *Redis) heartbeatLoop(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	started := time.Now()
	for {
		if r.pres.leaving() {
			return
		}
		r.heartbeat(ctx, started, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *redisPresence) leaving() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.left
}

func (r *Redis) heartbeat(ctx context.Context, started time.Time, wg *sync.WaitGroup) {
	info := r.view.info()
	if info.ID == "" {
		info.ID = r.cfg.NodeID
	}
	if info.Started.IsZero() {
		info.Started = started
	}
	data, _ := json.Marshal(info)
	ctx, cancel := context.WithTimeout(ctx, min(r.cfg.Timeout, time.Second))
	defer cancel()
	timeout := strconv.FormatInt(r.cfg.NodeTimeout.Milliseconds(), 10)
	v, err := heartbeatScript.Run(ctx, r.client, []string{r.nodesKey(), r.infoKey(r.cfg.Origin)},
		r.cfg.Origin, data, timeout, r.nodesKey()+":i:").Slice()
	if err != nil || len(v) != 3 {
		r.heartbeatFailedLog.Log("err", err)
		return
	}
	r.pres.beat.Store(time.Now().UnixNano())
	// Missing from the view after a heartbeat of ours was written: Redis
	// lost it, or the others took this process for dead.
	wroteBefore := r.pres.beaten.Swap(true)
	if known, _ := v[0].(int64); known == 0 && wroteBefore {
		r.log.Warn("presence: this node was missing from the cluster view (Redis lost its data, or the node was cut off past HUB_NODE_TIMEOUT): announcing its entries again")
		r.announceAll()
	}
	infos, _ := v[1].([]any)
	r.view.set(parseInfos(infos))
	dead, _ := v[2].([]any)
	for _, x := range dead {
		origin, _ := x.(string)
		if origin == "" || origin == r.cfg.Origin {
			continue
		}
		if _, busy := r.pres.cleaning.LoadOrStore(origin, true); busy {
			continue
		}
		wg.Go(func() {
			defer r.pres.cleaning.Delete(origin)
			r.cleanUp(ctx, origin)
		})
	}
}

// cleanUp removes a dead process's presence entries, with their leaves, if
// this process is the one that claims the job.
func (r *Redis) cleanUp(ctx context.Context, dead string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	timeout := strconv.FormatInt(r.cfg.NodeTimeout.Milliseconds(), 10)
	won, err := claimScript.Run(ctx, r.client, []string{r.nodesKey(), r.claimKey(dead)},
		dead, timeout, r.cfg.Origin, 30000).Int64()
	if err != nil || won != 1 {
		return
	}
	n, rooms, err := r.purge(ctx, dead)
	if err != nil {
		r.log.Warn("presence: removing a dead node's entries failed; another node tries again", "origin", dead, "err", err)
		r.client.Del(ctx, r.claimKey(dead))
		return
	}
	r.pres.cleanups.Inc()
	r.log.Info("presence: a node's heartbeat expired: its entries are removed", "origin", dead, "rooms", rooms, "entries", n)
}

// purge removes every presence entry and watch of process origin, room by
// room, and then the process from the cluster view.
func (r *Redis) purge(ctx context.Context, origin string) (entries, rooms int, err error) {
	names, err := r.client.SMembers(ctx, r.nodeRoomsKey(origin)).Result()
	if err != nil {
		return 0, 0, err
	}
	for chunk := range slices.Chunk(names, maxPresenceRooms) {
		pipe := r.client.Pipeline()
		cmds := make([]*redis.Cmd, len(chunk))
		for i, room := range chunk {
			cmds[i] = evalSha(pipe, r.presScript(purgeScript),
				[]string{r.entriesKey(room, origin), r.originsKey(room), r.watchKey(room)}, origin, r.channel(room))
		}
		pipe.Exec(ctx)
		for _, cmd := range cmds {
			if err := cmd.Err(); err != nil {
				if redis.HasErrorPrefix(err, "NOSCRIPT") {
					r.loadScripts(ctx)
				}
				r.pres.writes.WithLabelValues("purge", "failed").Inc()
				return entries, rooms, err
			}
			n, _ := cmd.Int64()
			entries += int(n)
			r.pres.writes.WithLabelValues("purge", "ok").Inc()
		}
		rooms += len(chunk)
	}
	pipe := r.client.Pipeline()
	pipe.ZRem(ctx, r.nodesKey(), origin)
	pipe.Del(ctx, r.nodeRoomsKey(origin), r.infoKey(origin), r.claimKey(origin))
	_, err = pipe.Exec(ctx)
	return entries, rooms, err
}

// LeaveCluster removes this process from the cluster's presence: no
// presence change is written after it begins; every entry still in Redis
// is removed, with its leave, and the node leaves the cluster view. The
// node calls it once its clients are gone, before it stops the broker.
func (r *Redis) LeaveCluster(ctx context.Context) error {
	p := &r.pres
	p.mu.Lock()
	p.left = true
	busy, idle := p.busy, p.idle
	p.mu.Unlock()
	if busy {
		select {
		case <-idle: // the round trip in flight has ended
		case <-ctx.Done():
			return fmt.Errorf("pubsub: leave the cluster: %w", ctx.Err())
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if _, _, err := r.purge(ctx, r.cfg.Origin); err != nil {
		return fmt.Errorf("pubsub: leave the cluster: %w", err)
	}
	return nil
}

// Members returns how many members room has, and at most limit of them.
func (r *Redis) Members(ctx context.Context, room string, limit int) (int, []Member, error) {
	v, err := readScript.Run(ctx, r.client, []string{r.originsKey(room)}, max(limit, 0)).Slice()
	if err != nil {
		return 0, nil, unavailable(fmt.Errorf("pubsub: presence of %q: %w", room, err))
	}
	if len(v) != 2 {
		return 0, nil, unavailable(fmt.Errorf("pubsub: presence of %q: unexpected reply %v", room, v))
	}
	total, _ := v[0].(int64)
	flat, _ := v[1].([]any)
	seen := make(map[string]bool, len(flat)/3)
	members := make([]Member, 0, len(flat)/3)
	for i := 0; i+2 < len(flat); i += 3 {
		c, _ := flat[i].(string)
		u, _ := flat[i+1].(string)
		n, _ := flat[i+2].(string)
		if seen[c] {
			continue // HSCAN may return an entry twice
		}
		seen[c] = true
		members = append(members, Member{Client: c, User: u, Node: n})
	}
	return int(total), members, nil
}

// Rooms returns the rooms with members anywhere in the cluster after the
// room after, by name, at most limit, with their member counts.
func (r *Redis) Rooms(ctx context.Context, after string, limit int) ([]RoomCount, error) {
	timeout := strconv.FormatInt(r.cfg.NodeTimeout.Milliseconds(), 10)
	names, err := roomsScript.Run(ctx, r.client, []string{r.nodesKey()}, timeout, r.nodesKey()+":r:").StringSlice()
	if err != nil {
		return nil, unavailable(fmt.Errorf("pubsub: rooms: %w", err))
	}
	slices.Sort(names)
	i, _ := slices.BinarySearch(names, after)
	for i < len(names) && names[i] <= after {
		i++
	}
	names = names[i:]
	var out []RoomCount
	for len(names) > 0 && len(out) < limit {
		chunk := names[:min(len(names), limit-len(out))]
		names = names[len(chunk):]
		pipe := r.client.Pipeline()
		cmds := make([]*redis.Cmd, len(chunk))
		for i, room := range chunk {
			cmds[i] = evalSha(pipe, readScript, []string{r.originsKey(room)}, 0)
		}
		pipe.Exec(ctx)
		for i, cmd := range cmds {
			if err := cmd.Err(); err != nil {
				if redis.HasErrorPrefix(err, "NOSCRIPT") {
					r.loadScripts(ctx)
				}
				return nil, unavailable(fmt.Errorf("pubsub: rooms: %w", err))
			}
			v, _ := cmd.Slice()
			if len(v) == 2 {
				if n, _ := v[0].(int64); n > 0 {
					out = append(out, RoomCount{Room: chunk[i], Members: int(n)})
				}
			}
		}
	}
	return out, nil
}

// Nodes returns the live nodes: those whose latest heartbeat is younger
// than the node timeout.
func (r *Redis) Nodes(ctx context.Context) ([]NodeInfo, error) {
	timeout := strconv.FormatInt(r.cfg.NodeTimeout.Milliseconds(), 10)
	v, err := nodesScript.Run(ctx, r.client, []string{r.nodesKey()}, timeout, r.nodesKey()+":i:").Slice()
	if err != nil {
		return nil, unavailable(fmt.Errorf("pubsub: nodes: %w", err))
	}
	nodes := parseInfos(v)
	r.view.set(nodes)
	return r.view.get(), nil
}

// parseInfos reads heartbeat infos; one that does not parse is left out.
func parseInfos(infos []any) []NodeInfo {
	var nodes []NodeInfo
	for _, x := range infos {
		s, _ := x.(string)
		var n NodeInfo
		if json.Unmarshal([]byte(s), &n) == nil && n.ID != "" {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// Command sends c to every node of the cluster, this one too.
func (r *Redis) Command(ctx context.Context, c Command) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	payload := append([]byte{payloadCommand}, data...)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if r.mode == cluster {
		err = r.client.SPublish(ctx, r.channel(controlRoom), payload).Err()
	} else {
		err = r.client.Publish(ctx, r.channel(controlRoom), payload).Err()
	}
	if err != nil {
		return unavailable(fmt.Errorf("pubsub: command: %w", err))
	}
	return nil
}

// deliverPresence hands a presence event or a command from a room's channel
// to sink, when it takes them.
func (r *Redis) deliverPresence(sink Sink, room, payload string) {
	ps, ok := sink.(PresenceSink)
	if !ok {
		return
	}
	switch payload[0] {
	case payloadPresence:
		if e, ok := parseEvent(room, payload[1:]); ok {
			ps.Presence(e)
			return
		}
	case payloadCommand:
		var c Command
		if room == controlRoom && json.Unmarshal([]byte(payload[1:]), &c) == nil {
			ps.Command(c)
			return
		}
	}
	r.metrics.dropped.Inc()
}

// controlSubscribed is 1 when the control room is among r.rooms; r.mu must
// be held.
func (r *Redis) controlSubscribed() int {
	if _, ok := r.rooms[controlRoom]; ok {
		return 1
	}
	return 0
}

// shardRooms is how many rooms sh is subscribed to, the control room not
// counted; r.mu must be held.
func (r *Redis) shardRooms(sh *shard) int {
	n := sh.count
	if s := r.rooms[controlRoom]; s != nil && s.target == sh && s.sent {
		n--
	}
	return n
}
