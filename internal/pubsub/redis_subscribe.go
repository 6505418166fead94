package pubsub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// event is what a receiver or a prober tells the subscribe loop.
type event struct {
	err    error     // the subscription connection failed
	back   time.Time // a probe sent at this time came back
	sentAt time.Time // a probe was published (Redis took it) at this time
}

// subscribeLoop owns the pub/sub connection. It runs sessions, one per
// redis.PubSub, until ctx ends; a session ends early when its subscription
// goes silent, and the next one starts from scratch.
func (r *Redis) subscribeLoop(ctx context.Context, sink Sink) {
	for ctx.Err() == nil && !r.stopping() {
		r.session(ctx, sink)
	}
	r.setSubReady(errors.New("redis: subscriptions stopped"))
}

// session runs one redis.PubSub until ctx ends or it goes silent.
func (r *Redis) session(ctx context.Context, sink Sink) {
	ps := r.sub.Subscribe(ctx)
	events := make(chan event, 64)
	stop := make(chan struct{})
	var recv sync.WaitGroup
	recv.Go(func() { r.receive(ps, sink, events, stop) })
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
	r.resetInterest()
	r.syncInterest(ctx, ps, true)

	var probes sync.WaitGroup
	defer probes.Wait()
	probe := func() {
		probes.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
			defer cancel()
			now := time.Now()
			sent := strconv.FormatInt(now.UnixNano(), 10)
			if err := r.client.Publish(pctx, r.probeCh, sent).Err(); err != nil {
				if ctx.Err() == nil {
					r.log.Debug("probe publish failed", "err", err)
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
			r.holdNodeID(pctx)
		})
	}
	var lastWarn time.Time
	notReady := func(reason error) {
		if r.Ready() == nil || time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			if isConfigError(reason) {
				r.log.Error("redis refuses the connection: check HUB_REDIS_URL (database, user, password)", "reason", reason)
			} else {
				r.log.Warn("fan-out not working: messages may be missed until the subscription is back", "reason", reason)
			}
		}
		r.setSubReady(reason)
	}

	ticker := time.NewTicker(r.cfg.ProbeInterval)
	defer ticker.Stop()
	probe()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.stopSubs:
			r.setSubReady(errors.New("redis: subscriptions stopped"))
			return
		case <-r.kick:
			r.syncInterest(ctx, ps, false)
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
				if *r.subErr.Load() != nil {
					r.log.Info("redis subscription ready")
					r.setSubReady(nil)
				}
			}
		case <-ticker.C:
			if !pendingSince.IsZero() && time.Since(pendingSince) > r.cfg.ProbeTimeout && lastSubErr.Before(pendingSince) {
				// Redis took a probe and it never came back on a connection
				// that reports no error: it is open and dead. Start over on a
				// fresh one.
				r.metrics.silentResets.Inc()
				notReady(errors.New("redis: subscription silent: a probe Redis took did not come back in time"))
				return
			}
			probe()
		}
	}
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
	r.setSubReady(*r.subErr.Load())
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
// to 2s, jittered), so a Redis that is down is not dialled in a tight loop.
func (r *Redis) receive(ps *redis.PubSub, sink Sink, events chan<- event, stop <-chan struct{}) {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	working := true // the connection carried something since the last failure
	for {
		msg, err := ps.Receive(context.Background())
		select {
		case <-stop:
			return
		default:
		}
		if err != nil {
			if working {
				// The connection was working and broke (a restart, a kill, an
				// output buffer Redis would not let grow): a reconnect.
				r.metrics.connectionLosses.Inc()
				working = false
			}
			r.markLost()
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
		if !working {
			r.log.Info("redis subscription connection restored")
		}
		working, backoff = true, minBackoff
		switch m := msg.(type) {
		case *redis.Message:
			if m.Channel == r.probeCh {
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
			msg, ok := parseMessage(room, m.Payload)
			if !ok {
				r.metrics.dropped.Inc()
				continue
			}
			r.metrics.received.Inc()
			sink.Deliver(msg)
		case *redis.Subscription:
			if resync := r.confirm(m); resync {
				r.metrics.gaps.Inc()
				sink.Resync([]string{room(r, m.Channel)})
			}
		}
	}
}

func room(r *Redis, channel string) string {
	name, _ := r.roomOf(channel)
	return name
}

// markLost records that the connection failed: every room live until now
// may miss messages until it is subscribed again.
func (r *Redis) markLost() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.rooms {
		select {
		case <-s.live:
			s.lost = true
		default:
		}
	}
}

// resetInterest starts a new session's bookkeeping: nothing is subscribed yet,
// and every wanted room must be; the rooms that were live are marked lost.
func (r *Redis) resetInterest() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for room, s := range r.rooms {
		s.sent, s.pending = false, 0
		select {
		case <-s.live:
			s.lost = true
		default:
		}
		if s.wanted {
			r.dirty[room] = struct{}{}
		} else {
			delete(r.rooms, room)
			delete(r.dirty, room)
		}
	}
}

// syncInterest sends the SUBSCRIBE and UNSUBSCRIBE commands that bring Redis in
// line with this node's interest, many channels per command.
func (r *Redis) syncInterest(ctx context.Context, ps *redis.PubSub, withProbe bool) {
	var subs, unsubs []string
	if withProbe {
		subs = append(subs, r.probeCh)
	}
	r.mu.Lock()
	for room := range r.dirty {
		s := r.rooms[room]
		switch {
		case s.wanted && !s.sent:
			subs = append(subs, r.channel(room))
			s.sent = true
			s.pending++
		case !s.wanted && s.sent:
			unsubs = append(unsubs, r.channel(room))
			s.sent = false
		}
		if !s.wanted && !s.sent && s.pending == 0 {
			delete(r.rooms, room)
		}
	}
	clear(r.dirty)
	r.metrics.subscriptions.Set(float64(len(r.rooms)))
	r.mu.Unlock()

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

// confirm records Redis's confirmation of a SUBSCRIBE or UNSUBSCRIBE, and
// reports whether it is the resubscription of a room that was lost.
func (r *Redis) confirm(m *redis.Subscription) (resync bool) {
	if m.Channel == r.probeCh {
		return false
	}
	room, ok := r.roomOf(m.Channel)
	if !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rooms[room]
	if s == nil {
		return false
	}
	switch m.Kind {
	case "subscribe":
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
		if !s.wanted && !s.sent && s.pending == 0 {
			delete(r.rooms, room)
		}
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
