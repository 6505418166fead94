package pubsub

import (
	"context"
	"sort"
	"sync"
)

// memPresence is the in-memory broker's presence: the node is the whole
// cluster. Events and commands are handed to the sink by a goroutine of
// Run's, in the order they happened, so a caller holding its own locks is
// never called back.
type memPresence struct {
	mu      sync.Mutex
	rooms   map[string]*memRoom
	queue   []any // PresenceEvent or Command, for the sink
	kick    chan struct{}
	stopped bool // Run ended: nothing takes events any more
}

// maxMemQueue bounds the events waiting for Run.
const maxMemQueue = 1 << 16

type memRoom struct {
	members map[string]Member // by client
	watched bool
}

func (p *memPresence) init() {
	p.rooms = make(map[string]*memRoom)
	p.kick = make(chan struct{}, 1)
}

func (p *memPresence) roomLocked(room string) *memRoom {
	r := p.rooms[room]
	if r == nil {
		r = &memRoom{members: make(map[string]Member)}
		p.rooms[room] = r
	}
	return r
}

// dropLocked forgets room when nothing is left of it.
func (p *memPresence) dropLocked(room string, r *memRoom) {
	if len(r.members) == 0 && !r.watched {
		delete(p.rooms, room)
	}
}

// emitLocked queues v for the sink. Before Run they wait; a queue nobody
// takes (Run never called, or ended) is bounded.
func (p *memPresence) emitLocked(v any) {
	if p.stopped || len(p.queue) >= maxMemQueue {
		return
	}
	p.queue = append(p.queue, v)
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Join adds m to room's presence.
func (m *Memory) Join(room string, mem Member) {
	p := &m.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.roomLocked(room)
	if _, ok := r.members[mem.Client]; ok {
		return
	}
	r.members[mem.Client] = mem
	if r.watched {
		p.emitLocked(PresenceEvent{Room: room, Members: []Member{mem}})
	}
}

// Leave removes m from room's presence.
func (m *Memory) Leave(room string, mem Member) {
	p := &m.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[room]
	if r == nil {
		return
	}
	old, ok := r.members[mem.Client]
	if !ok {
		return
	}
	delete(r.members, mem.Client)
	if r.watched {
		p.emitLocked(PresenceEvent{Room: room, Leave: true, Members: []Member{old}})
	}
	p.dropLocked(room, r)
}

// Watch records that this node has members that want room's events.
func (m *Memory) Watch(room string) {
	p := &m.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roomLocked(room).watched = true
}

// Unwatch records that no member of this node wants room's events.
func (m *Memory) Unwatch(room string) {
	p := &m.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.rooms[room]; r != nil {
		r.watched = false
		p.dropLocked(room, r)
	}
}

// Members returns how many members room has, and at most limit of them,
// ordered by client id.
func (m *Memory) Members(_ context.Context, room string, limit int) (int, []Member, error) {
	p := &m.pres
	p.mu.Lock()
	r := p.rooms[room]
	var all []Member
	if r != nil {
		all = make([]Member, 0, len(r.members))
		for _, mem := range r.members {
			all = append(all, mem)
		}
	}
	p.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].Client < all[j].Client })
	return len(all), all[:min(len(all), max(limit, 0))], nil
}

// Rooms returns the rooms with members after the room after, by name, at
// most limit.
func (m *Memory) Rooms(_ context.Context, after string, limit int) ([]RoomCount, error) {
	p := &m.pres
	p.mu.Lock()
	counts := make(map[string]int, len(p.rooms))
	for name, r := range p.rooms {
		counts[name] = len(r.members)
	}
	p.mu.Unlock()
	return pageRooms(counts, after, limit), nil
}

// Nodes returns this node: it is the whole cluster.
func (m *Memory) Nodes(context.Context) ([]NodeInfo, error) {
	return m.view.get(), nil
}

// Command hands c to this node.
func (m *Memory) Command(_ context.Context, c Command) error {
	p := &m.pres
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return unavailable(ErrClosed)
	}
	p.emitLocked(c)
	return nil
}

// LeaveCluster does nothing for the memory broker: its presence ends with
// the node.
func (m *Memory) LeaveCluster(context.Context) error { return nil }

// runPresence hands queued events and commands to sink until ctx ends.
func (m *Memory) runPresence(ctx context.Context, sink Sink) {
	ps, _ := sink.(PresenceSink)
	p := &m.pres
	defer func() {
		p.mu.Lock()
		p.stopped, p.queue = true, nil
		p.mu.Unlock()
	}()
	select {
	case p.kick <- struct{}{}: // what was queued before Run
	default:
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		q := p.queue
		p.queue = nil
		p.mu.Unlock()
		for _, v := range q {
			if ps == nil {
				break
			}
			switch v := v.(type) {
			case PresenceEvent:
				ps.Presence(v)
			case Command:
				ps.Command(v)
			}
		}
	}
}
