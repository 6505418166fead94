package pubsub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// shard is one pub/sub connection and the rooms subscribed on it: the whole
// Redis in standalone and Sentinel mode, one primary of a Redis Cluster.
type shard struct {
	// name labels the shard's metrics and names it in /readyz: empty in
	// standalone mode, the primary's Sentinel name, or the primary's
	// address in a Redis Cluster.
	name    string
	sub     *redis.Client // the pub/sub client
	probeCh string        // a channel this node publishes to itself, served by this shard
	sharded bool          // SSUBSCRIBE, SPUBLISH (cluster mode)
	kick    chan struct{} // interest in its rooms changed
	stop    chan struct{} // cluster mode: closed when it is no longer a primary
	err     atomic.Pointer[error]
	m       *shardMetrics

	// guarded by Redis.mu
	dirty  map[string]struct{} // rooms whose subscription here may need a change
	stale  map[string]struct{} // cluster mode: rooms that moved away, to unsubscribe here
	unsubs map[string]int      // cluster mode: SUNSUBSCRIBEs sent on this connection, not yet confirmed
	count  int                 // rooms subscribed here
}

func (r *Redis) newShard(name string, sub *redis.Client) *shard {
	sh := &shard{
		name:    name,
		sub:     sub,
		sharded: r.mode == cluster,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		dirty:   make(map[string]struct{}),
		stale:   make(map[string]struct{}),
		unsubs:  make(map[string]int),
		m:       r.metrics.forShard(name),
	}
	sh.err.Store(&errNotStarted)
	return sh
}

func (sh *shard) ready() error { return *sh.err.Load() }

func (sh *shard) setReady(err error) {
	sh.err.Store(&err)
	if err == nil {
		sh.m.ready.Set(1)
	} else {
		sh.m.ready.Set(0)
	}
}

func (sh *shard) poke() {
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

func (sh *shard) stopped() bool {
	select {
	case <-sh.stop:
		return true
	default:
		return false
	}
}

// event is what a receiver or a prober tells the subscribe loop.
type event struct {
	err    error     // the subscription connection failed
	back   time.Time // a probe sent at this time came back
	sentAt time.Time // a probe was published (Redis took it) at this time
}

// subscribeLoop owns a shard's pub/sub connection. It runs sessions, one per
// redis.PubSub, until ctx ends (or, in cluster mode, the shard is no longer
// a primary); a session ends early when its subscription goes silent (or,
// in cluster mode, its connection fails), and the next one starts from
// scratch.
func (r *Redis) subscribeLoop(ctx context.Context, sink Sink, sh *shard) {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	for ctx.Err() == nil && !r.stopping() && !sh.stopped() {
		started := time.Now()
		if !r.session(ctx, sink, sh) || !sh.sharded {
			continue
		}
		// Cluster mode: the connection failed. Wait before the next one,
		// longer each time it fails at once.
		if time.Since(started) > 10*time.Second {
			backoff = minBackoff
		}
		select {
		case <-ctx.Done():
		case <-r.stopSubs:
		case <-sh.stop:
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, maxBackoff)
	}
	sh.setReady(errors.New("redis: subscriptions stopped"))
	r.updateReady()
}

// session runs one redis.PubSub until ctx ends or it goes silent. It reports
// whether it ended because the connection failed (cluster mode only: there
// go-redis cannot resubscribe by itself, since one SSUBSCRIBE takes the
// channels of one slot).
func (r *Redis) session(ctx context.Context, sink Sink, sh *shard) (failed bool) {
	if rt := r.routes.Load(); sh.sharded && rt != nil {
		sh.probeCh = r.probeChannel(rt, sh) // its slots may have changed since the last session
	}
	ps := sh.sub.Subscribe(ctx)
	events := make(chan event, 64)
	stop := make(chan struct{})
	ended := make(chan struct{}) // cluster mode: the receiver gave up on the connection
	var recv sync.WaitGroup
	recv.Go(func() { r.receive(ps, sh, sink, events, stop, ended) })
	defer func() {
		close(stop)
		ps.Close()
		recv.Wait()
	}()

	lastBack := time.Time{} // the send time of the latest probe that came back
	lastErr := time.Time{}  // the subscription or a probe's publish failed
	lastSubErr := time.Time{}
	// pendingSince is when the oldest probe Redis took, and that has not come
	// back yet, was sent; zero when none waits. Only such a probe proves a
	// silent subscription: a probe that could not even be published says
	// Redis is slow or unreachable, not that the subscription is dead.
	var pendingSince time.Time
	r.resetInterest(sh)
	r.syncInterest(ctx, ps, sh, true)

	var probes sync.WaitGroup
	defer probes.Wait()
	probe := func() {
		probes.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
			defer cancel()
			now := time.Now()
			sent := strconv.FormatInt(now.UnixNano(), 10)
			var err error
			if sh.sharded {
				err = r.client.SPublish(pctx, sh.probeCh, sent).Err()
			} else {
				err = r.client.Publish(pctx, sh.probeCh, sent).Err()
			}
			if err != nil {
				if ctx.Err() == nil {
					r.log.Debug("probe publish failed", "shard", sh.name, "err", err)
					select {
					case events <- event{err: fmt.Errorf("redis: commands fail: %w", err), sentAt: now}:
					default:
					}
				}
			} else {
				select {
				case events <- event{sentAt: now}:
				default:
				}
			}
			if r.mode != cluster {
				r.holdNodeID(pctx) // in cluster mode the cluster loop holds it
			}
		})
	}
	var lastWarn time.Time
	notReady := func(reason error) {
		if sh.ready() == nil || time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			if isConfigError(reason) {
				r.log.Error("redis refuses the connection: check "+r.settingsNames()+" (database, user, password)", "shard", sh.name, "reason", reason)
			} else {
				r.log.Warn("fan-out not working: messages may be missed until the subscription is back", "shard", sh.name, "reason", reason)
			}
		}
		sh.setReady(reason)
		r.updateReady()
	}

	ticker := time.NewTicker(r.cfg.ProbeInterval)
	defer ticker.Stop()
	probe()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-r.stopSubs:
			sh.setReady(errors.New("redis: subscriptions stopped"))
			r.updateReady()
			return false
		case <-sh.stop:
			return false
		case <-ended:
			notReady(errors.New("redis: subscription connection lost"))
			return true
		case <-sh.kick:
			r.syncInterest(ctx, ps, sh, false)
		case ev := <-events:
			now := time.Now()
			switch {
			case ev.err != nil && !ev.sentAt.IsZero():
				lastErr = now
				notReady(ev.err)
			case ev.err != nil:
				lastErr, lastSubErr = now, now
				pendingSince = time.Time{} // a new connection: what was sent on the old one proves nothing
				notReady(fmt.Errorf("redis: subscription connection lost: %w", ev.err))
			case !ev.sentAt.IsZero():
				if ev.sentAt.After(lastBack) && (pendingSince.IsZero() || ev.sentAt.Before(pendingSince)) {
					pendingSince = ev.sentAt
				}
			default:
				r.metrics.probeLatency.Observe(now.Sub(ev.back).Seconds())
				if ev.back.After(lastBack) {
					lastBack = ev.back
				}
				if !pendingSince.IsZero() && !pendingSince.After(ev.back) {
					pendingSince = time.Time{}
				}
				if lastErr.After(ev.back) {
					continue // this probe was sent before the failure: no proof yet
				}
				if sh.ready() != nil {
					r.log.Info("redis subscription ready", "shard", sh.name)
					sh.setReady(nil)
					r.updateReady()
				}
			}
		case <-ticker.C:
			if !pendingSince.IsZero() && time.Since(pendingSince) > r.cfg.ProbeTimeout && lastSubErr.Before(pendingSince) {
				// Redis took a probe and it never came back on a connection
				// that reports no error: it is open and dead. Start over on a
				// fresh one.
				r.metrics.silentResets.Inc()
				notReady(errors.New("redis: subscription silent: a probe Redis took did not come back in time"))
				return false
			}
			probe()
		}
	}
}

// settingsNames names the settings of this broker's deployment, for logs.
func (r *Redis) settingsNames() string {
	switch r.mode {
	case cluster:
		return "HUB_REDIS_CLUSTER, HUB_REDIS_USERNAME, HUB_REDIS_PASSWORD"
	case sentinel:
		return "HUB_REDIS_SENTINEL_MASTER, HUB_REDIS_USERNAME, HUB_REDIS_PASSWORD"
	}
	return "HUB_REDIS_URL"
}

// holdNodeID keeps this node's id taken by this process in Redis, and makes
// the broker not ready while another live process holds it.
func (r *Redis) holdNodeID(ctx context.Context) {
	ttl := 3 * max(r.cfg.ProbeInterval, r.cfg.ProbeTimeout)
	holder, err := leaseScript.Run(ctx, r.client, []string{r.leaseK}, r.cfg.Origin, ttl.Milliseconds()).Text()
	if err != nil {
		return // Redis unreachable: the probe says so
	}
	var dup error
	if holder != "" {
		dup = fmt.Errorf("another live node uses HUB_NODE_ID %q (process %s); this one stays not ready until it stops", r.cfg.NodeID, holder)
	}
	prev := *r.dupErr.Swap(&dup)
	switch {
	case dup != nil && prev == nil:
		r.metrics.duplicateID.Set(1)
		r.log.Error("duplicate node id: give every node its own HUB_NODE_ID", "node_id", r.cfg.NodeID, "other", holder)
	case dup == nil && prev != nil:
		r.metrics.duplicateID.Set(0)
		r.log.Info("node id is this node's alone again", "node_id", r.cfg.NodeID)
	}
	r.updateReady()
}

// isConfigError reports whether err is Redis refusing the connection for a
// setting that will not fix itself: a database that does not exist, a wrong
// user or password.
func isConfigError(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	for _, p := range []string{"ERR DB index", "WRONGPASS", "NOAUTH", "NOPERM", "ERR invalid password", "ERR AUTH"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

func (r *Redis) stopping() bool {
	select {
	case <-r.stopSubs:
		return true
	default:
		return false
	}
}

// receive reads what the subscription connection brings until stop is closed.
// It never blocks on the hub: the Sink does not block, and events are handed
// over without waiting. After a failure go-redis reconnects and resubscribes
// on the next Receive; receive waits between attempts, longer each time (up
// to 2s, jittered; 500ms with Sentinel), so a Redis that is down is not
// dialled in a tight loop.
//
// In cluster mode a failed connection is not used again (go-redis would
// resubscribe every channel in one SSUBSCRIBE, which Redis refuses for more
// than one slot): receive closes ended and returns, and the session starts
// over. A Redis error reply is not a failure there: a MOVED answer to a
// SSUBSCRIBE says which primary owns the slot now.
func (r *Redis) receive(ps *redis.PubSub, sh *shard, sink Sink, events chan<- event, stop <-chan struct{}, ended chan<- struct{}) {
	const minBackoff = 50 * time.Millisecond
	maxBackoff := 2 * time.Second
	if r.mode == sentinel {
		// Each attempt asks Sentinel for the primary: a promoted replica is
		// found within half a second.
		maxBackoff = 500 * time.Millisecond
	}
	backoff := minBackoff
	// working: the connection carried something since the last failure. In
	// cluster mode every connection is new: the first failure of one that
	// never worked is no reconnect.
	working := !sh.sharded
	for {
		msg, err := ps.Receive(context.Background())
		select {
		case <-stop:
			return
		default:
		}
		if err != nil {
			var rerr redis.Error
			if sh.sharded && errors.As(err, &rerr) {
				r.redirected(sh, err)
				continue
			}
			if working {
				// The connection was working and broke (a restart, a kill, an
				// output buffer Redis would not let grow): a reconnect.
				r.metrics.connectionLosses.Inc()
				sh.m.reconnects.Inc()
				working = false
			}
			r.markLost(sh)
			if sh.sharded {
				r.requestReload()
				close(ended)
				return
			}
			select {
			case events <- event{err: err}:
			default:
			}
			wait := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-stop:
				return
			case <-time.After(wait):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if !working && !sh.sharded {
			r.log.Info("redis subscription connection restored", "shard", sh.name)
		}
		working, backoff = true, minBackoff
		switch m := msg.(type) {
		case *redis.Message:
			if m.Channel == sh.probeCh {
				if sent, err := strconv.ParseInt(m.Payload, 10, 64); err == nil {
					select {
					case events <- event{back: time.Unix(0, sent)}:
					default:
					}
				}
				continue
			}
			room, ok := r.roomOf(m.Channel)
			if !ok {
				r.metrics.dropped.Inc()
				continue
			}
			if len(m.Payload) > 0 && (m.Payload[0] == payloadPresence || m.Payload[0] == payloadCommand) {
				r.deliverPresence(sink, room, m.Payload)
				continue
			}
			msg, ok := parseMessage(room, m.Payload)
			if !ok {
				r.metrics.dropped.Inc()
				continue
			}
			r.metrics.received.Inc()
			if r.fencing && msg.Offset > 0 {
				r.noteSeen(room, msg.Epoch, msg.Offset, msg.Data)
			}
			sink.Deliver(msg)
		case *redis.Subscription:
			if m.Channel == sh.probeCh {
				if m.Kind == "sunsubscribe" {
					// The probe's slot moved away from this primary: start
					// over with a probe channel it serves.
					r.requestReload()
					close(ended)
					return
				}
				continue
			}
			if resync := r.confirm(sh, m); resync {
				r.metrics.gaps.Inc()
				sh.m.gaps.Inc()
				r.resync(sink, room(r, m.Channel))
			}
		}
	}
}

func room(r *Redis, channel string) string {
	name, _ := r.roomOf(channel)
	return name
}

// resync reports a room whose subscription is back after a loss: at once,
// or, when fencing, after its history was checked.
func (r *Redis) resync(sink Sink, room string) {
	if room == controlRoom {
		return // commands have no history: nothing to fill
	}
	if !r.fencing {
		sink.Resync([]string{room})
		return
	}
	r.fenceMu.Lock()
	r.fenceQ = append(r.fenceQ, room)
	r.fenceMu.Unlock()
	select {
	case r.fenceKick <- struct{}{}:
	default:
	}
}

// markLost records that sh's connection failed: every room live there until
// now may miss messages until it is subscribed again.
func (r *Redis) markLost(sh *shard) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.rooms {
		if s.target != sh {
			continue
		}
		select {
		case <-s.live:
			s.lost = true
		default:
		}
	}
}

// resetInterest starts a new session's bookkeeping: nothing is subscribed on
// sh yet, and every room it serves that is wanted must be; the rooms that
// were live are marked lost.
func (r *Redis) resetInterest(sh *shard) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(sh.stale)
	clear(sh.unsubs)
	sh.count = 0
	for room, s := range r.rooms {
		if s.target != sh {
			continue
		}
		s.sent, s.pending = false, 0
		select {
		case <-s.live:
			s.lost = true
		default:
		}
		if s.wanted {
			sh.dirty[room] = struct{}{}
		} else {
			delete(r.rooms, room)
			delete(sh.dirty, room)
		}
	}
}

// syncInterest sends the SUBSCRIBE and UNSUBSCRIBE commands that bring sh's
// connection in line with this node's interest, many channels per command
// (in cluster mode, the channels of one slot per command: Redis takes no
// more).
func (r *Redis) syncInterest(ctx context.Context, ps *redis.PubSub, sh *shard, withProbe bool) {
	var subs, unsubs []string
	if withProbe {
		subs = append(subs, sh.probeCh)
	}
	r.mu.Lock()
	for room := range sh.stale {
		unsubs = append(unsubs, r.channel(room))
		sh.unsubs[room]++
	}
	clear(sh.stale)
	for room := range sh.dirty {
		s := r.rooms[room]
		if s == nil || s.target != sh {
			continue // it moved on; its new shard takes it
		}
		switch {
		case s.wanted && !s.sent:
			subs = append(subs, r.channel(room))
			s.sent = true
			s.pending++
			sh.count++
		case !s.wanted && s.sent:
			unsubs = append(unsubs, r.channel(room))
			s.sent = false
			sh.count--
			if sh.sharded {
				sh.unsubs[room]++
			}
		}
		if !s.wanted && !s.sent && s.pending == 0 {
			delete(r.rooms, room)
		}
	}
	clear(sh.dirty)
	r.metrics.subscriptions.Set(float64(len(r.rooms) - r.controlSubscribed()))
	sh.m.subscriptions.Set(float64(r.shardRooms(sh)))
	r.mu.Unlock()

	if sh.sharded {
		for _, group := range bySlot(unsubs) {
			for batch := range chunks(group, r.cfg.MaxBatch) {
				if err := ps.SUnsubscribe(ctx, batch...); err != nil {
					r.log.Debug("sunsubscribe failed; the connection's reset drops it", "shard", sh.name, "channels", len(batch), "err", err)
				}
			}
		}
		// One SSUBSCRIBE per slot, written one after another without
		// waiting: the confirmations come back on the receive loop.
		for _, group := range bySlot(subs) {
			for batch := range chunks(group, r.cfg.MaxBatch) {
				if err := ps.SSubscribe(ctx, batch...); err != nil {
					r.log.Debug("ssubscribe failed; the session starts over", "shard", sh.name, "channels", len(batch), "err", err)
				}
			}
		}
		return
	}
	for batch := range chunks(unsubs, r.cfg.MaxBatch) {
		if err := ps.Unsubscribe(ctx, batch...); err != nil {
			r.log.Debug("unsubscribe failed; the connection's reset drops it", "channels", len(batch), "err", err)
		}
	}
	for batch := range chunks(subs, r.cfg.MaxBatch) {
		// On failure go-redis keeps the channels and subscribes them when it
		// reconnects; the confirmation still arrives then. A SUBSCRIBE whose
		// write failed on a live connection may be dropped by that
		// reconnect: send it once more.
		if err := ps.Subscribe(ctx, batch...); err != nil {
			r.log.Debug("subscribe failed; retried on reconnect", "channels", len(batch), "err", err)
			ps.Subscribe(ctx, batch...)
		}
	}
}

// bySlot groups channels by their hash slot, in a stable order.
func bySlot(channels []string) [][]string {
	if len(channels) == 0 {
		return nil
	}
	groups := map[uint16][]string{}
	for _, ch := range channels {
		s := slot(ch)
		groups[s] = append(groups[s], ch)
	}
	keys := make([]uint16, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([][]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, groups[k])
	}
	return out
}

// confirm records Redis's confirmation of a SUBSCRIBE or UNSUBSCRIBE on sh,
// and reports whether it is the resubscription of a room that was lost. In
// cluster mode Redis also ends subscriptions by itself (a "sunsubscribe"
// push) when the room's slot leaves the primary: the room is then lost, and
// the cluster loop finds its new owner.
func (r *Redis) confirm(sh *shard, m *redis.Subscription) (resync bool) {
	room, ok := r.roomOf(m.Channel)
	if !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rooms[room]
	switch m.Kind {
	case "subscribe", "ssubscribe":
		if s == nil || s.target != sh {
			return false
		}
		if s.pending > 0 {
			s.pending--
		}
		if !s.wanted {
			return false
		}
		select {
		case <-s.live:
		default:
			if s.pending == 0 && s.sent {
				close(s.live)
			}
		}
		if s.lost {
			s.lost = false
			return true
		}
	case "unsubscribe":
		if s != nil && !s.wanted && !s.sent && s.pending == 0 {
			delete(r.rooms, room)
		}
	case "sunsubscribe":
		if n := sh.unsubs[room]; n > 0 {
			if n == 1 {
				delete(sh.unsubs, room)
			} else {
				sh.unsubs[room] = n - 1
			}
			if s != nil && !s.wanted && !s.sent && s.pending == 0 {
				delete(r.rooms, room)
			}
			return false
		}
		if s == nil || s.target != sh || !s.sent {
			return false
		}
		// Redis ended it: the slot moved, or this primary stepped down.
		s.sent, s.pending = false, 0
		sh.count--
		sh.m.subscriptions.Set(float64(r.shardRooms(sh)))
		select {
		case <-s.live:
			s.lost = true
		default:
		}
		if s.wanted {
			r.dirty[room] = struct{}{}
			select {
			case r.kick <- struct{}{}:
			default:
			}
		} else if s.pending == 0 {
			delete(r.rooms, room)
		}
		r.requestReload()
	}
	return false
}

func chunks(s []string, n int) func(func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// redirected handles a Redis error reply on sh's pub/sub connection (cluster
// mode): a MOVED answer to a SSUBSCRIBE names the slot's owner now.
func (r *Redis) redirected(sh *shard, err error) {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "MOVED "); ok {
		slotText, addr, _ := strings.Cut(rest, " ")
		if n, perr := strconv.Atoi(slotText); perr == nil && n >= 0 && n < slotCount && addr != "" {
			select {
			case r.moved <- movedSlot{slot: uint16(n), addr: addr}:
			default:
				r.requestReload()
			}
			return
		}
	}
	r.log.Warn("redis refused a subscription command", "shard", sh.name, "err", err)
	r.requestReload()
}

// requestReload asks the cluster loop to read the slot map again.
func (r *Redis) requestReload() {
	if r.mode != cluster {
		return
	}
	select {
	case r.reload <- struct{}{}:
	default:
	}
}
