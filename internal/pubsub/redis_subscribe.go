package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// event is what a receiver tells the subscribe loop.
type event struct {
	err   error         // the subscription connection failed
	probe time.Duration // a probe came back after this long (when err is nil)
}

// subscribeLoop owns the pub/sub connection. It runs sessions, one per
// redis.PubSub, until ctx ends; a session ends early when its subscription
// goes silent, and the next one starts from scratch.
func (r *Redis) subscribeLoop(ctx context.Context, sink Sink) {
	var gapSince time.Time // zero while no gap is open
	for ctx.Err() == nil && !r.stopping() {
		gapSince = r.session(ctx, sink, gapSince)
	}
	r.setReady(errors.New("redis: subscriptions stopped"))
}

// session runs one redis.PubSub until ctx ends or it goes silent, and returns
// when the open gap started, if one is open.
func (r *Redis) session(ctx context.Context, sink Sink, gapSince time.Time) time.Time {
	ps := r.client.Subscribe(ctx)
	events := make(chan event, 16)
	stop := make(chan struct{})
	var recv sync.WaitGroup
	recv.Go(func() { r.receive(ps, sink, events, stop) })
	defer func() {
		close(stop)
		ps.Close()
		recv.Wait()
	}()

	start := time.Now()
	lastProbe, lastErr := time.Time{}, time.Time{}
	r.resetInterest()
	r.syncInterest(ctx, ps, true)

	var probes sync.WaitGroup
	defer probes.Wait()
	probe := func() {
		probes.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
			defer cancel()
			sent := strconv.FormatInt(time.Now().UnixNano(), 10)
			if err := r.client.Publish(pctx, r.probeCh, sent).Err(); err != nil && ctx.Err() == nil {
				r.log.Debug("probe publish failed", "err", err)
			}
		})
	}
	var lastWarn time.Time
	openGap := func(reason error) {
		if r.Ready() == nil || time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			r.log.Warn("fan-out not working: messages may be lost until the subscription is back", "reason", reason)
		}
		if gapSince.IsZero() && r.hadRooms() {
			gapSince = time.Now()
		}
		r.setReady(reason)
	}

	ticker := time.NewTicker(r.cfg.ProbeInterval)
	defer ticker.Stop()
	probe()
	for {
		select {
		case <-ctx.Done():
			return gapSince
		case <-r.stopSubs:
			r.setReady(errors.New("redis: subscriptions stopped"))
			return gapSince
		case <-r.kick:
			r.syncInterest(ctx, ps, false)
		case ev := <-events:
			now := time.Now()
			if ev.err != nil {
				if lastErr.Before(lastProbe) || lastErr.IsZero() {
					r.metrics.connectionLosses.Inc()
				}
				lastErr = now
				openGap(fmt.Errorf("redis: subscription connection lost: %w", ev.err))
				continue
			}
			r.metrics.probeLatency.Observe(ev.probe.Seconds())
			lastProbe = now
			if lastErr.After(now.Add(-ev.probe)) {
				continue // this probe was sent before the failure: no proof yet
			}
			if r.Ready() != nil {
				if !gapSince.IsZero() {
					rooms := r.wantedRooms()
					r.metrics.gaps.Inc()
					r.log.Warn("fan-out gap closed: subscription back; members told to refetch",
						"gap", time.Since(gapSince).Round(time.Millisecond).String(), "rooms", len(rooms))
					sink.Gap(rooms)
					gapSince = time.Time{}
				} else {
					r.log.Info("redis subscription ready")
				}
				r.setReady(nil)
			}
		case <-ticker.C:
			ref := lastProbe
			if ref.Before(start) {
				ref = start
			}
			if time.Since(ref) > r.cfg.ProbeTimeout {
				r.metrics.silentResets.Inc()
				openGap(errors.New("redis: subscription silent: no probe came back in time"))
				return gapSince // a fresh connection and subscription
			}
			probe()
		}
	}
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
// It never blocks on the hub: Sink.Deliver does not block, and events are
// handed over without waiting.
func (r *Redis) receive(ps *redis.PubSub, sink Sink, events chan<- event, stop <-chan struct{}) {
	const maxBackoff = 250 * time.Millisecond
	backoff := 10 * time.Millisecond
	failed := false
	for {
		msg, err := ps.Receive(context.Background())
		select {
		case <-stop:
			return
		default:
		}
		if err != nil {
			failed = true
			select {
			case events <- event{err: err}:
			default:
			}
			select { // go-redis reconnects on the next Receive; do not spin
			case <-stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Message:
			if m.Channel == r.probeCh {
				if sent, err := strconv.ParseInt(m.Payload, 10, 64); err == nil {
					select {
					case events <- event{probe: time.Since(time.Unix(0, sent))}:
					default:
					}
				}
				continue
			}
			room, ok := strings.CutPrefix(m.Channel, r.cfg.Prefix)
			if !ok {
				r.metrics.dropped.Inc()
				continue
			}
			r.metrics.received.Inc()
			sink.Deliver(room, m.Payload)
		case *redis.Subscription:
			r.confirm(m)
			if failed {
				failed = false
				r.log.Info("redis subscription connection restored")
			}
		}
	}
}

// resetInterest starts a new session's bookkeeping: nothing is subscribed yet,
// and every wanted room must be.
func (r *Redis) resetInterest() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for room, s := range r.rooms {
		s.sent, s.pending = false, 0
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
			subs = append(subs, r.cfg.Prefix+room)
			s.sent = true
			s.pending++
		case !s.wanted && s.sent:
			unsubs = append(unsubs, r.cfg.Prefix+room)
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
		// reconnects; the confirmation still arrives then.
		if err := ps.Subscribe(ctx, batch...); err != nil {
			r.log.Debug("subscribe failed; retried on reconnect", "channels", len(batch), "err", err)
		}
	}
}

// confirm records Redis's confirmation of a SUBSCRIBE or UNSUBSCRIBE.
func (r *Redis) confirm(m *redis.Subscription) {
	room, ok := strings.CutPrefix(m.Channel, r.cfg.Prefix)
	if !ok || m.Channel == r.probeCh {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rooms[room]
	if s == nil {
		return
	}
	switch m.Kind {
	case "subscribe":
		if s.pending > 0 {
			s.pending--
		}
		if s.pending == 0 && s.wanted && s.sent {
			select {
			case <-s.live:
			default:
				close(s.live)
			}
		}
	case "unsubscribe":
		if !s.wanted && !s.sent && s.pending == 0 {
			delete(r.rooms, room)
		}
	}
}

func (r *Redis) wantedRooms() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rooms := make([]string, 0, len(r.rooms))
	for room, s := range r.rooms {
		if s.wanted {
			rooms = append(rooms, room)
		}
	}
	return rooms
}

func (r *Redis) hadRooms() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rooms) > 0
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
