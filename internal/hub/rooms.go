package hub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// roomShards is how many parts the room table is split into, each with a lock
// of its own, so joins, leaves and deliveries to different rooms do not
// contend on one lock.
const roomShards = 64

// roomTable maps room names to the rooms with local members.
type roomTable struct {
	seed   maphash.Seed
	shards [roomShards]roomShard
}

type roomShard struct {
	mu sync.RWMutex
	m  map[string]*room
	_  [40]byte // keep shards on separate cache lines
}

func (t *roomTable) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].m = make(map[string]*room)
	}
}

func (t *roomTable) shard(name string) *roomShard {
	return &t.shards[maphash.String(t.seed, name)%roomShards]
}

func (t *roomTable) get(name string) *room {
	sh := t.shard(name)
	sh.mu.RLock()
	r := sh.m[name]
	sh.mu.RUnlock()
	return r
}

func (t *roomTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// room is one room with local members. With history on it is also the
// node's sequencer for the room: it knows the next offset due, holds
// messages that arrive early, reads holes back from the history, and hands
// every member every message once, in offset order.
type room struct {
	h    *Hub
	name string

	mu       sync.Mutex // guards everything below
	members  []*member
	removed  bool // the last member left: the room is out of the table
	watchers int  // members with watch set
	// A presence snapshot for the watchers is being read (after the
	// subscription was lost): events that arrive meanwhile wait in presHeld.
	presFetching bool
	presHeld     [][]byte

	// History on. Until synced the room does not know where the history
	// stands, and holds what arrives.
	synced  bool
	syncing chan struct{} // closed when the sync in flight ends
	epoch   string
	next    uint64           // the offset due next
	held    []pubsub.Message // arrived early (offset past next), by offset
	filling bool             // a fill goroutine runs
	suspect bool             // the subscription was lost: the next fill tells what it finds missing

	// recent keeps the frames of the messages [recentLo, next), for members
	// that recover; it is kept only while recoveries use it.
	recentOn    bool
	recent      []recentFrame
	recentLo    uint64
	recentUntil time.Time
	fetch       *windowFetch // a read of the history window in flight
}

// member is one client's membership of one room.
type member struct {
	c    *Client
	room *room
	// Guarded by room.mu:
	live  bool   // receives the room's messages
	after uint64 // with history on: the member receives offsets above it only
	// Presence: the member's entry is written (announced), it receives the
	// room's joins and leaves (watch), it is out of the room for good (left).
	announced, watch, left bool
}

type recentFrame struct {
	offset uint64
	frame  []byte
}

// maxHeld bounds the messages a room holds while it waits for a hole to be
// filled; past it the hole is given up on and told as a gap.
func (h *Hub) maxHeld() int { return max(2*h.cfg.HistorySize, 256) }

// recentTTL is how long a room keeps its recent frames after the last
// recovery used them.
const recentTTL = 10 * time.Second

// join makes c a member of the room name; the membership is not live until
// the caller makes it so. It reports whether c was a member already.
func (h *Hub) join(c *Client, name string) (m *member, existed bool, err error) {
	c.roomsMu.Lock()
	defer c.roomsMu.Unlock()
	if c.gone {
		return nil, false, errClosed
	}
	for _, m := range c.rooms {
		if m.room.name == name {
			return m, true, nil
		}
	}
	if len(c.rooms) >= h.cfg.MaxRoomsPerClient {
		return nil, false, errTooManyRooms
	}
	sh := h.rooms.shard(name)
	sh.mu.Lock()
	r := sh.m[name]
	if r == nil {
		r = &room{h: h, name: name}
		sh.m[name] = r
		h.metrics.rooms.Inc()
		// Under the shard's lock: the broker sees a room's subscribes and
		// unsubscribes in the order they happen.
		h.broker.Subscribe(name)
	}
	m = &member{c: c, room: r}
	r.mu.Lock()
	r.members = append(r.members, m)
	r.mu.Unlock()
	sh.mu.Unlock()
	c.rooms = append(c.rooms, m)
	return m, false, nil
}

var errTooManyRooms = errors.New("hub: too many rooms")

// leave removes c from the room name. It reports whether c was a member.
func (h *Hub) leave(c *Client, name string) bool {
	c.roomsMu.Lock()
	var m *member
	for i, x := range c.rooms {
		if x.room.name == name {
			m = x
			c.rooms = slices.Delete(c.rooms, i, i+1)
			break
		}
	}
	c.roomsMu.Unlock()
	if m == nil {
		return false
	}
	h.removeMember(m)
	return true
}

// removeMember takes m out of its room, and drops the room when it empties.
func (h *Hub) removeMember(m *member) {
	r := m.room
	sh := h.rooms.shard(r.name)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r.mu.Lock()
	if i := slices.Index(r.members, m); i >= 0 {
		last := len(r.members) - 1
		r.members[i] = r.members[last]
		r.members[last] = nil
		r.members = r.members[:last]
	}
	m.live = false
	r.retractLocked(m)
	empty := len(r.members) == 0
	if empty {
		r.removed = true
		r.held, r.recent, r.recentOn = nil, nil, false
	}
	r.mu.Unlock()
	if empty && sh.m[r.name] == r {
		delete(sh.m, r.name)
		h.metrics.rooms.Dec()
		h.broker.Unsubscribe(r.name)
	}
}

// emitLocked queues frame for every live member, skipping members that have
// offset already. frame is shared and must not change afterwards.
func (r *room) emitLocked(offset uint64, frame []byte) {
	n := 0
	for _, m := range r.members {
		if !m.live || (offset != 0 && offset <= m.after) {
			continue
		}
		if m.c.send(frame) {
			n++
		}
		if offset != 0 {
			m.after = offset
		}
	}
	r.h.metrics.delivered.Add(float64(n))
	if offset != 0 && r.recentOn {
		if r.fetch == nil && time.Now().After(r.recentUntil) {
			r.recentOn, r.recent = false, nil
			return
		}
		r.recent = append(r.recent, recentFrame{offset, frame})
		if extra := len(r.recent) - max(r.h.cfg.HistorySize, 1); extra > 0 {
			r.recent = slices.Delete(r.recent, 0, extra)
			r.recentLo = r.recent[0].offset
		}
	}
}

// gapLocked tells every live member that messages may have been lost.
func (r *room) gapLocked() {
	frame := wire.AppendGap(nil, r.name)
	for _, m := range r.members {
		if m.live {
			m.c.send(frame)
		}
	}
	r.h.metrics.gaps.Inc()
}

// acceptLocked takes one message of the room (history on), from the
// broker's subscription (live: its order is the stored order, so a hole is
// a loss to fill) or from this node's own publish receipt (which may come
// before messages stored earlier: those are awaited, not filled).
func (r *room) acceptLocked(m pubsub.Message, live bool) {
	if r.removed {
		return
	}
	if !r.synced {
		r.holdLocked(m)
		return
	}
	if m.Epoch != r.epoch {
		switch {
		case m.Offset == 1:
			// A new history begins (the old one expired, or Redis lost it).
			r.newEpochLocked(m.Epoch)
		case live:
			r.newEpochLocked(m.Epoch)
			r.holdLocked(m)
			r.startFillLocked()
			return
		default:
			r.holdLocked(m) // its predecessors in the new epoch are due
			return
		}
	}
	switch {
	case m.Offset < r.next:
		r.h.metrics.duplicates.Inc()
	case m.Offset == r.next:
		r.emitMessageLocked(m)
		r.releaseHeldLocked()
	default:
		r.holdLocked(m)
		if live {
			r.startFillLocked()
		}
	}
}

func (r *room) emitMessageLocked(m pubsub.Message) {
	r.emitLocked(m.Offset, wire.AppendMessage(nil, r.name, m.Offset, m.Data))
	r.next = m.Offset + 1
}

// newEpochLocked starts the room over in epoch: offsets count from 1 again.
// Members that were live keep their place as "before everything".
func (r *room) newEpochLocked(epoch string) {
	if r.suspect {
		r.gapLocked() // what the old history held past our place is gone
	}
	r.epoch, r.next = epoch, 1
	r.held = slices.DeleteFunc(r.held, func(m pubsub.Message) bool { return m.Epoch != epoch })
	r.recentOn, r.recent = false, nil
	for _, m := range r.members {
		m.after = 0
	}
}

// holdLocked keeps m until the messages before it have arrived.
func (r *room) holdLocked(m pubsub.Message) {
	i, found := slices.BinarySearchFunc(r.held, m, func(a, b pubsub.Message) int {
		if a.Epoch != b.Epoch {
			return cmp.Compare(a.Epoch, b.Epoch)
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
	if found {
		r.h.metrics.duplicates.Inc()
		return
	}
	r.held = slices.Insert(r.held, i, m)
	if len(r.held) > r.h.maxHeld() && r.synced {
		// Waited too long for the hole: give it up, and say so.
		r.h.log.Warn("history: a hole could not be filled in time; members told gap", "room", r.name, "from", r.next)
		r.gapLocked()
		r.skipToHeldLocked()
	}
}

// skipToHeldLocked moves past a hole to the first message held.
func (r *room) skipToHeldLocked() {
	for _, m := range r.held {
		if m.Epoch == r.epoch && m.Offset > r.next {
			r.jumpLocked(m.Offset)
			break
		}
	}
	r.releaseHeldLocked()
}

// jumpLocked moves the room's place past a hole it has told as a gap. The
// recent frames no longer join up: a recovery from before the hole must be
// told the gap too.
func (r *room) jumpLocked(next uint64) {
	r.next = next
	if r.recentOn {
		r.recent, r.recentLo = nil, next
	}
}

// releaseHeldLocked emits the held messages that are due now, in order.
func (r *room) releaseHeldLocked() {
	keep := r.held[:0]
	for _, m := range r.held {
		switch {
		case m.Epoch != r.epoch:
			keep = append(keep, m)
		case m.Offset < r.next:
			r.h.metrics.duplicates.Inc()
		case m.Offset == r.next:
			r.emitMessageLocked(m)
		default:
			keep = append(keep, m)
		}
	}
	clear(r.held[len(keep):])
	r.held = keep
}

// position is where the node stands in the room: its epoch and the offset
// of the last message it delivered.
func (r *room) positionLocked() wire.Position {
	return wire.Position{Epoch: r.epoch, Offset: r.next - 1}
}

// ensureSynced learns where the room's history stands, once: the offsets
// this node delivers start after it. Concurrent callers share one read.
func (r *room) ensureSynced(ctx context.Context) error {
	for {
		r.mu.Lock()
		if r.synced {
			r.mu.Unlock()
			return nil
		}
		if r.removed {
			r.mu.Unlock()
			return errClosed
		}
		if ch := r.syncing; ch != nil {
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ch := make(chan struct{})
		r.syncing = ch
		r.mu.Unlock()

		epoch, top, err := r.h.broker.Position(ctx, r.name)

		r.mu.Lock()
		r.syncing = nil
		close(ch)
		if err != nil {
			r.mu.Unlock()
			return fmt.Errorf("hub: history position of %q: %w", r.name, err)
		}
		r.synced, r.epoch, r.next = true, epoch, top+1
		r.releaseHeldLocked()
		if len(r.held) > 0 {
			r.startFillLocked() // something came in past a hole meanwhile
		}
		r.mu.Unlock()
		return nil
	}
}

// startFillLocked starts reading the room's missed range back from the
// history, unless a read is under way already.
func (r *room) startFillLocked() {
	if r.filling || r.removed {
		return
	}
	r.filling = true
	h := r.h
	h.work.Go(func() { r.fill() })
}

// fill reads the room's history past the node's place and delivers what the
// node missed, in order; a hole the history no longer holds is told as a
// gap. It runs until nothing is missing any more.
func (r *room) fill() {
	h := r.h
	backoff := 20 * time.Millisecond
	stuck := 0 // reads in a row that moved nothing
	for {
		r.mu.Lock()
		if r.removed || !r.synced {
			r.filling = false
			r.mu.Unlock()
			return
		}
		after, epoch := r.next-1, r.epoch
		r.mu.Unlock()

		h.metrics.fills.Inc()
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
		hist, err := h.broker.History(ctx, r.name, after, h.cfg.HistorySize)
		cancel()

		r.mu.Lock()
		if r.removed {
			r.filling = false
			r.mu.Unlock()
			return
		}
		more := true
		if err == nil {
			more = r.applyFillLocked(hist, epoch)
		}
		if more && (err != nil || (r.epoch == epoch && r.next-1 == after)) {
			stuck++
		} else {
			stuck = 0
		}
		if more && (stuck > 5 || h.ctx.Err() != nil) {
			// The hole cannot be filled: stop waiting for it, and say so.
			h.log.Warn("history: missed messages could not be read back; members told gap", "room", r.name, "err", err)
			r.gapLocked()
			r.suspect = false
			r.skipToHeldLocked()
			more = false
		}
		if !more {
			r.filling = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if stuck > 0 {
			select {
			case <-time.After(backoff):
			case <-h.ctx.Done():
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// applyFillLocked delivers what a history read of the room's epoch brought,
// and reports whether another read is needed.
func (r *room) applyFillLocked(hist pubsub.History, epoch string) (more bool) {
	if r.epoch != epoch {
		return true // an epoch began while the read was in flight: read it
	}
	if hist.Epoch != r.epoch {
		// The history was lost or expired: a new one began. What the old one
		// held past our place is gone.
		r.suspect = true
		r.newEpochLocked(hist.Epoch)
		r.suspect = false
		return hist.Top > 0 || len(r.held) > 0
	}
	if hist.Top+1 < r.next {
		// The history is behind what this node already delivered: Redis came
		// back from an older state, and will hand those offsets out again.
		// Members are told, and the room goes on from the history's place.
		r.h.log.Error("history: the room's history went back (Redis restored an older state); members told gap",
			"room", r.name, "delivered", r.next-1, "history", hist.Top)
		r.gapLocked()
		r.jumpLocked(hist.Top + 1)
		for _, m := range r.members {
			m.after = min(m.after, hist.Top)
		}
		r.held = slices.DeleteFunc(r.held, func(m pubsub.Message) bool { return m.Epoch == r.epoch })
		r.suspect = false
		return false
	}
	for _, m := range hist.Messages {
		if m.Offset < r.next {
			continue
		}
		if m.Offset > r.next {
			r.h.log.Warn("history: messages missed are no longer kept; members told gap", "room", r.name,
				"from", r.next, "to", m.Offset-1)
			r.gapLocked()
			r.jumpLocked(m.Offset)
		}
		r.emitMessageLocked(m)
		r.releaseHeldLocked()
	}
	if len(hist.Messages) == 0 && hist.Top >= r.next {
		// Everything missed was trimmed away.
		r.h.log.Warn("history: messages missed are no longer kept; members told gap", "room", r.name,
			"from", r.next, "to", hist.Top)
		r.gapLocked()
		r.jumpLocked(hist.Top + 1)
	}
	r.suspect = false
	r.releaseHeldLocked()
	// Still a hole below what is held: it was stored after this read, or the
	// page was full. Read again.
	return len(r.held) > 0
}
