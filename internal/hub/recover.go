package hub

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// errWouldBlock: finishing a subscribe needs the broker; the caller hands it
// to a goroutine that may wait.
var errWouldBlock = errors.New("hub: would block")

// windowFetch is one read of a room's whole history window, shared by every
// member that recovers while it is in flight.
type windowFetch struct {
	done chan struct{}
	err  error // set before done is closed
}

// finishSubscribe makes m, a new membership of c, live: once the room's
// subscription is live and (with history on) the node knows where the room
// stands, after recovering the messages since req.Since when asked. It queues
// for c, in order: the recovered messages or a gap, the ack, then the live
// messages. With mayBlock false it returns errWouldBlock instead of waiting
// for the broker; nothing is queued then, and it can be called again.
func (h *Hub) finishSubscribe(ctx context.Context, m *member, req wire.Request, mayBlock bool) error {
	r := m.room
	if !h.broker.Subscribed(r.name) {
		if !mayBlock {
			return errWouldBlock
		}
		if err := h.broker.WaitSubscribed(ctx, r.name); err != nil {
			return err
		}
	}
	if !h.history() {
		r.mu.Lock()
		m.live = true
		m.c.ack(req.ID, r.name, wire.Position{}, nil)
		r.mu.Unlock()
		return nil
	}
	if !mayBlock {
		r.mu.Lock()
		synced := r.synced
		r.mu.Unlock()
		if !synced {
			return errWouldBlock
		}
	} else if err := r.ensureSynced(ctx); err != nil {
		return err
	}
	for round := 0; ; round++ {
		r.mu.Lock()
		if r.removed || !r.synced {
			r.mu.Unlock()
			return errClosed
		}
		if req.Since == nil {
			m.after = r.next - 1
			m.live = true
			m.c.ack(req.ID, r.name, r.positionLocked(), nil)
			r.mu.Unlock()
			return nil
		}
		if r.tryRecoverLocked(m, req, round >= 2) {
			r.mu.Unlock()
			return nil
		}
		if !mayBlock {
			r.mu.Unlock()
			return errWouldBlock
		}
		f := r.windowLocked()
		r.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if f.err != nil {
			return f.err
		}
	}
}

// tryRecoverLocked brings m from since up to the room's place, with what the
// room holds, and makes it live. It reports false when the room's recent
// frames do not reach back far enough; with giveUp set it then tells the
// member the range is lost instead.
func (r *room) tryRecoverLocked(m *member, req wire.Request, giveUp bool) bool {
	since := req.Since
	cur := r.next - 1
	switch {
	case since.Epoch != r.epoch:
		r.recoveryLostLocked(m, req)
	case since.Offset >= cur:
		// Nothing missed (this node may even be a little behind the one the
		// client came from): deliver only what is past its place.
		m.after = since.Offset
		m.live = true
		m.c.ack(req.ID, r.name, wire.Position{Epoch: r.epoch, Offset: max(cur, since.Offset)}, new(true))
		r.h.metrics.recoveries.WithLabelValues("recovered").Inc()
	case r.recentOn && r.recentLo <= since.Offset+1:
		r.recentUntil = time.Now().Add(recentTTL)
		n := 0
		for _, f := range r.recent {
			if f.offset > since.Offset {
				m.c.send(f.frame)
				n++
			}
		}
		r.h.metrics.recovered.Add(float64(n))
		m.after = cur
		m.live = true
		m.c.ack(req.ID, r.name, r.positionLocked(), new(true))
		r.h.metrics.recoveries.WithLabelValues("recovered").Inc()
	case giveUp:
		r.recoveryLostLocked(m, req)
	default:
		return false
	}
	return true
}

// recoveryLostLocked tells m that the messages since its place are not kept
// any more, and makes it live from the room's place on.
func (r *room) recoveryLostLocked(m *member, req wire.Request) {
	m.c.send(wire.AppendGap(nil, r.name))
	m.after = r.next - 1
	m.live = true
	m.c.ack(req.ID, r.name, r.positionLocked(), new(false))
	r.h.metrics.recoveries.WithLabelValues("gap").Inc()
}

// windowLocked makes the room keep its recent frames, and returns the read
// of its history window in flight, starting one if none is.
func (r *room) windowLocked() *windowFetch {
	if !r.recentOn {
		r.recentOn = true
		r.recentLo = r.next
		r.recent = nil
	}
	r.recentUntil = time.Now().Add(recentTTL)
	if r.fetch != nil {
		return r.fetch
	}
	f := &windowFetch{done: make(chan struct{})}
	r.fetch = f
	epoch := r.epoch
	h := r.h
	h.work.Go(func() {
		h.metrics.windowReads.Inc()
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
		hist, err := h.broker.History(ctx, r.name, 0, h.cfg.HistorySize)
		cancel()
		r.mu.Lock()
		if err == nil {
			r.mergeWindowLocked(hist, epoch)
		}
		f.err = err
		r.fetch = nil
		close(f.done)
		r.mu.Unlock()
	})
	return f
}

// mergeWindowLocked puts the messages of a history read in front of the
// room's recent frames, when they join up with them.
func (r *room) mergeWindowLocked(hist pubsub.History, epoch string) {
	if !r.recentOn || hist.Epoch != r.epoch || epoch != r.epoch || len(hist.Messages) == 0 {
		return
	}
	if hist.Top+1 < r.recentLo {
		return // the read came before frames the room has dropped since: no seam
	}
	var prefix []recentFrame
	for _, m := range hist.Messages {
		if m.Offset < r.recentLo {
			prefix = append(prefix, recentFrame{m.Offset, wire.AppendMessage(nil, r.name, m.Offset, m.Data)})
		}
	}
	if len(prefix) == 0 {
		return
	}
	r.recent = append(prefix, r.recent...)
	r.recentLo = prefix[0].offset
	if extra := len(r.recent) - max(r.h.cfg.HistorySize, 1); extra > 0 {
		r.recent = slices.Delete(r.recent, 0, extra)
		r.recentLo = r.recent[0].offset
	}
}
