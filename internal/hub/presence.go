package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// Presence is the cluster-wide presence store the hub writes its members'
// entries to and reads rooms' members from. pubsub.Memory and pubsub.Redis
// implement it. Join, Leave, Watch and Unwatch never block: the store
// carries them out in the background, in the order they were called for a
// room; the hub calls them under the room's lock.
type Presence interface {
	Join(room string, m pubsub.Member)
	Leave(room string, m pubsub.Member)
	Watch(room string)
	Unwatch(room string)
	Members(ctx context.Context, room string, limit int) (count int, members []pubsub.Member, err error)
	Rooms(ctx context.Context, after string, limit int) ([]pubsub.RoomCount, error)
	Nodes(ctx context.Context) ([]pubsub.NodeInfo, error)
	Command(ctx context.Context, c pubsub.Command) error
}

// ErrNoPresence: the hub was made without a presence store.
var ErrNoPresence = errors.New("hub: presence is not served by this node")

// clientID returns c's id in the cluster: this process's origin and a
// number of its own.
func (c *Client) clientID() string {
	return c.hub.cfg.Origin + "." + strconv.FormatUint(c.seq, 36)
}

// presenceMember returns c's presence entry.
func (c *Client) presenceMember() pubsub.Member {
	return pubsub.Member{Client: c.clientID(), User: c.user(), Node: c.hub.cfg.NodeID}
}

// wireMembers converts presence entries for the wire.
func wireMembers(members []pubsub.Member) []wire.Member {
	ms := make([]wire.Member, len(members))
	for i, m := range members {
		ms[i] = wire.Member(m)
	}
	return ms
}

// user returns the token subject of c, or "".
func (c *Client) user() string {
	if g := c.guard.currentGrant(); g != nil {
		return g.Subject
	}
	return ""
}

// announce writes m's presence entry once its subscribe succeeded, and,
// with watch, makes it receive the room's joins and leaves.
func (h *Hub) announce(m *member, watch bool) {
	p := h.cfg.Presence
	if p == nil {
		return
	}
	r := m.room
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.left {
		return // it left meanwhile: nothing to announce
	}
	if watch && !m.watch {
		m.watch = true
		r.watchers++
		if r.watchers == 1 {
			p.Watch(r.name) // before the join: a watcher hears its own
		}
	}
	if !m.announced {
		m.announced = true
		p.Join(r.name, m.c.presenceMember())
	}
}

// retractLocked removes m's presence entry and watch; r.mu must be held.
func (r *room) retractLocked(m *member) {
	m.left = true
	p := r.h.cfg.Presence
	if p == nil {
		return
	}
	if m.watch {
		m.watch = false
		r.watchers--
		if r.watchers == 0 {
			p.Unwatch(r.name)
		}
	}
	if m.announced {
		m.announced = false
		p.Leave(r.name, m.c.presenceMember())
	}
}

// Presence takes joins or leaves the broker brought in, and queues them for
// every member of the room that asked for them. It never blocks.
func (h *Hub) Presence(e pubsub.PresenceEvent) {
	r := h.rooms.get(e.Room)
	if r == nil || len(e.Members) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchers == 0 {
		return
	}
	var frame []byte
	for i, m := range e.Members {
		if i > 0 {
			frame = append(frame, '\n')
		}
		frame = wire.AppendPresenceEvent(frame, e.Leave, e.Room, wire.Member(m))
	}
	h.metrics.presenceEvents.Add(float64(len(e.Members)))
	if r.presFetching {
		r.presHeld = append(r.presHeld, frame) // after the snapshot being read
		return
	}
	r.sendWatchersLocked(frame)
}

// sendWatchersLocked queues frame for every member that watches the room;
// r.mu must be held.
func (r *room) sendWatchersLocked(frame []byte) {
	for _, m := range r.members {
		if m.watch {
			m.c.send(frame)
		}
	}
}

// resyncPresenceLocked starts reading a snapshot of the room's presence for
// its watchers, whose joins and leaves may have been lost with the room's
// subscription; r.mu must be held. The watchers get it as a presence object
// without an id, then the events that arrived meanwhile.
func (r *room) resyncPresenceLocked() {
	if r.h.cfg.Presence == nil || r.watchers == 0 || r.presFetching {
		return
	}
	r.presFetching = true
	r.h.work.Go(r.fetchPresence)
}

func (r *room) fetchPresence() {
	h := r.h
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
		count, members, err := h.cfg.Presence.Members(ctx, r.name, h.cfg.PresenceLimit)
		cancel()
		r.mu.Lock()
		if r.removed || r.watchers == 0 || h.ctx.Err() != nil {
			r.presFetching, r.presHeld = false, nil
			r.mu.Unlock()
			return
		}
		if err == nil {
			r.sendWatchersLocked(wire.AppendPresence(nil, nil, r.name, count, wireMembers(members)))
			for _, frame := range r.presHeld {
				r.sendWatchersLocked(frame)
			}
			r.presFetching, r.presHeld = false, nil
			r.mu.Unlock()
			h.metrics.presenceSnapshots.Inc()
			return
		}
		r.mu.Unlock()
		h.subscribeFailedLog.Log("room", r.name, "err", err, "what", "presence snapshot")
		select {
		case <-h.ctx.Done():
		case <-time.After(wait):
		}
	}
}

// Command carries out an operator's command on this node's clients.
func (h *Hub) Command(cmd pubsub.Command) {
	if cmd.User == "" {
		return
	}
	h.mu.Lock()
	var clients []*Client
	for c := range h.clients {
		if c.user() == cmd.User {
			clients = append(clients, c)
		}
	}
	h.mu.Unlock()
	for _, c := range clients {
		switch cmd.Op {
		case "disconnect":
			h.log.Info("connection closed by the operator", "ip", c.ip, "code", cmd.Code)
			c.close(websocket.StatusCode(cmd.Code), cmd.Reason)
		case "unsubscribe":
			if h.leave(c, cmd.Room) {
				c.send(wire.AppendUnsubscribed(nil, cmd.Room, wire.CodeForbidden, "removed by the operator"))
			}
		}
	}
}

// presence answers a presence request. It reads the store: called on the
// dispatch goroutine.
func (c *Client) presence(req wire.Request) {
	h := c.hub
	ctx, cancel := context.WithTimeout(c.lifetime(), h.cfg.BrokerTimeout)
	defer cancel()
	count, members, err := h.PresenceOf(ctx, req.Room)
	if err != nil {
		if c.lifetime().Err() == nil {
			c.replyError(wire.ErrorFor(req.ID, wire.CodeUnavailable, "presence could not be read; retry"))
		}
		return
	}
	c.send(wire.AppendPresence(nil, req.ID, req.Room, count, wireMembers(members)))
}

// handlePresence checks a presence request and answers it off the read
// loop.
func (c *Client) handlePresence(req wire.Request, inDispatch bool) {
	h := c.hub
	if h.cfg.Presence == nil {
		c.replyError(wire.ErrorFor(req.ID, wire.CodeBadRequest, "presence is not served by this node"))
		return
	}
	if g := c.guard.currentGrant(); g != nil && !g.CanSubscribe(req.Room) {
		h.metrics.forbidden.Inc()
		c.replyError(wire.ErrorFor(req.ID, wire.CodeForbidden, "the token does not grant this room"))
		return
	}
	if inDispatch {
		c.presence(req)
		return
	}
	// The request outlives the frame it came in: keep a copy of its id.
	req.ID = bytes.Clone(req.ID)
	c.goDispatch(func() error {
		c.presence(req)
		return nil
	})
}

// presenceReuse is how long a presence read that ended serves the requests
// for its room that come after it.
const presenceReuse = 100 * time.Millisecond

// presenceRead is one read of a room's presence, shared by every request
// for the room while it is in flight and for presenceReuse after.
type presenceRead struct {
	done    chan struct{}
	at      time.Time // set before done is closed, like the rest
	count   int
	members []pubsub.Member
	err     error
}

// PresenceOf returns how many members room has in the cluster, and at most
// the presence limit of them. Requests for one room share reads: a flood
// of presence requests costs the broker at most one read of the room per
// round trip and per presenceReuse, whatever the number of requests.
func (h *Hub) PresenceOf(ctx context.Context, room string) (int, []pubsub.Member, error) {
	if h.cfg.Presence == nil {
		return 0, nil, ErrNoPresence
	}
	h.presMu.Lock()
	pr := h.presReads[room]
	if pr != nil {
		select {
		case <-pr.done:
			if pr.err != nil || time.Since(pr.at) > presenceReuse {
				pr = nil
			}
		default:
		}
	}
	if pr == nil {
		pr = &presenceRead{done: make(chan struct{})}
		h.presReads[room] = pr
		h.work.Go(func() {
			rctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
			pr.count, pr.members, pr.err = h.cfg.Presence.Members(rctx, room, h.cfg.PresenceLimit)
			cancel()
			pr.at = time.Now()
			close(pr.done)
			time.AfterFunc(presenceReuse, func() {
				h.presMu.Lock()
				if h.presReads[room] == pr {
					delete(h.presReads, room)
				}
				h.presMu.Unlock()
			})
		})
	}
	h.presMu.Unlock()
	select {
	case <-pr.done:
		return pr.count, pr.members, pr.err
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("hub: presence of %q: %w", room, ctx.Err())
	}
}

// Nodes returns the cluster's live nodes.
func (h *Hub) Nodes(ctx context.Context) ([]pubsub.NodeInfo, error) {
	if h.cfg.Presence == nil {
		return nil, ErrNoPresence
	}
	return h.cfg.Presence.Nodes(ctx)
}

// RoomsPage returns the rooms with members in the cluster after the room
// after, by name, at most limit.
func (h *Hub) RoomsPage(ctx context.Context, after string, limit int) ([]pubsub.RoomCount, error) {
	if h.cfg.Presence == nil {
		return nil, ErrNoPresence
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.BrokerTimeout)
	defer cancel()
	return h.cfg.Presence.Rooms(ctx, after, limit)
}

// SendCommand sends an operator's command to every node, this one too.
func (h *Hub) SendCommand(ctx context.Context, cmd pubsub.Command) error {
	if h.cfg.Presence == nil {
		return ErrNoPresence
	}
	switch cmd.Op {
	case "disconnect", "unsubscribe":
	default:
		return fmt.Errorf("hub: unknown command %q", cmd.Op)
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.BrokerTimeout)
	defer cancel()
	return h.cfg.Presence.Command(ctx, cmd)
}

var _ pubsub.PresenceSink = (*Hub)(nil)
