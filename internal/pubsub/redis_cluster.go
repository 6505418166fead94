package pubsub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster mode: one pub/sub connection per primary (Redis takes a
// SSUBSCRIBE only at the primary that owns the channel's slot), each probed
// on its own, and every room subscribed at the primary its slot belongs to.
// The cluster loop owns the slot map and the shards; a shard's session owns
// its connection.

// routes is a snapshot of the slot map. It does not change once stored.
type routes struct {
	bySlot    [slotCount]*shard
	shards    []*shard          // one per primary, by name
	slots     map[*shard]string // the slot ranges each serves ("0-5460,10923")
	uncovered string            // the slot ranges no primary serves
}

// movedSlot is a MOVED reply: the primary at addr owns slot now.
type movedSlot struct {
	slot uint16
	addr string
}

const (
	slotMapEvery     = 5 * time.Second        // read the slot map this often, changes or not
	slotMapWhileDown = 250 * time.Millisecond // this often while a shard is not proven live
	slotMapSpacing   = 100 * time.Millisecond // and at most this often
)

// blind reports whether a shard of rt has a subscription not proven live.
func blind(rt *routes) bool {
	for _, sh := range rt.shards {
		if sh.ready() != nil {
			return true
		}
	}
	return false
}

// clusterLoop runs the subscriptions of cluster mode until ctx ends or they
// are stopped: it reads the slot map, runs one shard session per primary,
// routes every room to the primary that owns its slot, and follows slots
// that move (a MOVED reply, a "sunsubscribe" push, a failed connection, or
// the periodic read). It also holds this node's id.
func (r *Redis) clusterLoop(ctx context.Context, sink Sink) {
	shards := map[string]*shard{}
	var sessions sync.WaitGroup
	var helpers sync.WaitGroup // slot map reads, leases
	hctx, stopHelpers := context.WithCancel(ctx)
	defer func() {
		stopHelpers()
		for _, sh := range shards {
			close(sh.stop)
		}
		sessions.Wait()
		helpers.Wait()
		r.setClusterErr(errors.New("redis: subscriptions stopped"))
	}()

	type loaded struct {
		slots []redis.ClusterSlot
		err   error
	}
	results := make(chan loaded, 1)
	loading := false
	timer := time.NewTimer(0) // the first read at once
	defer timer.Stop()
	var due, last time.Time // when the timer fires; when the last read ended
	due = time.Now()
	again := false // a read was asked for while one was running
	failures := 0
	schedule := func(d time.Duration) {
		if loading {
			again = true
			return
		}
		at := time.Now().Add(max(d, slotMapSpacing-time.Since(last)))
		if due.IsZero() || at.Before(due) {
			timer.Reset(time.Until(at))
			due = at
		}
	}
	lease := time.NewTicker(r.cfg.ProbeInterval)
	defer lease.Stop()
	leasing := false
	leaseDone := make(chan struct{}, 1)

	start := func(sh *shard) {
		sessions.Go(func() {
			r.subscribeLoop(ctx, sink, sh)
			sh.sub.Close()
		})
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.stopSubs:
			return
		case <-r.kick:
			r.route()
		case <-r.reload:
			schedule(0)
		case mv := <-r.moved:
			batch := []movedSlot{mv}
		drain:
			for {
				select {
				case mv := <-r.moved:
					batch = append(batch, mv)
				default:
					break drain
				}
			}
			if r.patchRoutes(batch, shards) {
				schedule(0) // a primary not known yet
			}
			schedule(time.Second) // and check the whole map soon
		case <-timer.C:
			due = time.Time{}
			loading = true
			helpers.Go(func() {
				lctx, cancel := context.WithTimeout(hctx, 2*time.Second)
				defer cancel()
				slots, err := r.cluster.ClusterSlots(lctx).Result()
				results <- loaded{slots, err} // room for one: only one read runs
			})
		case res := <-results:
			loading, last = false, time.Now()
			if res.err != nil {
				failures++
				if r.routes.Load() == nil {
					r.setClusterErr(fmt.Errorf("redis cluster: cannot read the slot map (HUB_REDIS_CLUSTER): %w", res.err))
				}
				r.log.Debug("redis cluster: slot map read failed", "err", res.err)
				schedule(min(time.Duration(1<<min(failures, 5))*50*time.Millisecond, 2*time.Second))
				continue
			}
			failures = 0
			r.cluster.ReloadState(ctx) // go-redis's own copy follows
			for _, sh := range r.applySlots(res.slots, shards) {
				start(sh)
			}
			switch rt := r.routes.Load(); {
			case again:
				again = false
				schedule(0)
			case rt.uncovered != "" || blind(rt):
				// A cluster forming, or a primary down: its replica may take
				// over any moment, and the map says so first.
				schedule(slotMapWhileDown)
			default:
				schedule(slotMapEvery)
			}
		case <-lease.C:
			if leasing {
				continue
			}
			leasing = true
			helpers.Go(func() {
				lctx, cancel := context.WithTimeout(hctx, r.cfg.ProbeTimeout)
				defer cancel()
				r.holdNodeID(lctx)
				leaseDone <- struct{}{} // room for one: only one runs
			})
		case <-leaseDone:
			leasing = false
		}
	}
}

// applySlots takes a CLUSTER SLOTS reply as the slot map: shards for new
// primaries are made (and returned, for the caller to start), those of nodes
// no longer primaries are stopped, and every room moves to its slot's
// primary.
func (r *Redis) applySlots(slots []redis.ClusterSlot, shards map[string]*shard) (started []*shard) {
	var owner [slotCount]string
	primaries := map[string]bool{}
	for _, cs := range slots {
		if len(cs.Nodes) == 0 || cs.Nodes[0].Addr == "" {
			continue
		}
		addr := cs.Nodes[0].Addr
		if host, port, err := net.SplitHostPort(addr); err == nil && host == "" && len(r.cfg.Cluster) > 0 {
			// A node that never met another knows no address of its own.
			seed, _, _ := net.SplitHostPort(r.cfg.Cluster[0])
			addr = net.JoinHostPort(seed, port)
		}
		primaries[addr] = true
		for s := max(cs.Start, 0); s <= cs.End && s < slotCount; s++ {
			owner[s] = addr
		}
	}
	for addr, sh := range shards {
		if !primaries[addr] {
			r.log.Info("redis cluster: node is no longer a primary; its rooms move", "shard", addr)
			close(sh.stop)
			delete(shards, addr)
			r.metrics.dropShard(addr) // before a shard of the same address may come back
		}
	}
	for addr := range primaries {
		if shards[addr] == nil {
			o := *r.subOpts
			o.Addr = addr
			sh := r.newShard(addr, redis.NewClient(&o))
			shards[addr] = sh
			started = append(started, sh)
			r.log.Info("redis cluster: primary found", "shard", addr)
		}
	}
	rt := &routes{}
	for s, addr := range owner {
		rt.bySlot[s] = shards[addr]
	}
	r.storeRoutes(rt, shards)
	for _, sh := range started {
		sh.probeCh = r.probeChannel(rt, sh)
	}
	return started
}

// patchRoutes applies MOVED replies to the slot map, and reports whether one
// names a node that is not a known primary (the map must be read again).
func (r *Redis) patchRoutes(moved []movedSlot, shards map[string]*shard) (unknown bool) {
	old := r.routes.Load()
	if old == nil {
		return true
	}
	rt := &routes{bySlot: old.bySlot}
	for _, mv := range moved {
		sh := shards[mv.addr]
		if sh == nil {
			unknown = true
			continue
		}
		rt.bySlot[mv.slot] = sh
	}
	r.storeRoutes(rt, shards)
	return unknown
}

// storeRoutes completes rt (its shards and their slot ranges), stores it,
// and moves every room to its slot's shard.
func (r *Redis) storeRoutes(rt *routes, shards map[string]*shard) {
	rt.slots = map[*shard]string{}
	ranges := map[*shard][]string{}
	var uncovered []string
	for s := 0; s < slotCount; {
		sh, e := rt.bySlot[s], s
		for e+1 < slotCount && rt.bySlot[e+1] == sh {
			e++
		}
		text := strconv.Itoa(s)
		if e > s {
			text += "-" + strconv.Itoa(e)
		}
		if sh == nil {
			uncovered = append(uncovered, text)
		} else {
			ranges[sh] = append(ranges[sh], text)
		}
		s = e + 1
	}
	for _, sh := range shards {
		rt.shards = append(rt.shards, sh)
		rt.slots[sh] = strings.Join(ranges[sh], ",")
	}
	slices.SortFunc(rt.shards, func(a, b *shard) int { return strings.Compare(a.name, b.name) })
	rt.uncovered = strings.Join(uncovered, ",")
	r.routes.Store(rt)
	r.clusterErr.Store(new(error))
	r.updateReady()

	r.mu.Lock()
	for room, s := range r.rooms {
		if t := rt.bySlot[s.slot]; t != s.target {
			r.retargetLocked(room, s, t)
		}
	}
	r.mu.Unlock()
	r.route()
}

// route hands the rooms whose interest changed to the shards that serve
// them. A room whose slot no primary serves waits for the next slot map.
func (r *Redis) route() {
	rt := r.routes.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	for room := range r.dirty {
		s := r.rooms[room]
		if s == nil {
			delete(r.dirty, room)
			continue
		}
		var t *shard
		if rt != nil {
			t = rt.bySlot[s.slot]
		}
		switch {
		case t == nil && !s.wanted && !s.sent && s.pending == 0:
			delete(r.rooms, room)
		case t == nil:
			continue
		case t != s.target:
			r.retargetLocked(room, s, t)
		default:
			t.dirty[room] = struct{}{}
			t.poke()
		}
		delete(r.dirty, room)
	}
}

// retargetLocked moves room to shard t: unsubscribed where it was, to be
// subscribed at t (or, with t nil, when a primary serves its slot again).
// A room that was live is lost until then. r.mu is held.
func (r *Redis) retargetLocked(room string, s *roomSub, t *shard) {
	if old := s.target; old != nil && s.sent {
		old.stale[room] = struct{}{}
		old.count--
		old.poke()
	}
	select {
	case <-s.live:
		s.lost = true
	default:
	}
	s.sent, s.pending, s.target = false, 0, t
	switch {
	case !s.wanted:
		delete(r.rooms, room)
		delete(r.dirty, room)
	case t == nil:
		r.dirty[room] = struct{}{}
	default:
		t.dirty[room] = struct{}{}
		t.poke()
	}
}

// probeChannel returns a probe channel of this node that hashes to a slot
// sh serves: "<prefix>!probe{<tag>}:<origin>".
func (r *Redis) probeChannel(rt *routes, sh *shard) string {
	for i := 0; i < 64*slotCount; i++ {
		tag := strconv.Itoa(i)
		if rt.bySlot[crc16(tag)%slotCount] == sh {
			return r.cfg.Prefix + "!probe{" + tag + "}:" + r.cfg.Origin
		}
	}
	return r.cfg.Prefix + "!probe{}:" + r.cfg.Origin // it serves no slot: it is about to go
}
