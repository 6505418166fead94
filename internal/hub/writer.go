package hub

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// writer is a client's send queue and the state of the goroutine that
// writes it. It has one state at a time:
//
//	idle:      nothing queued, no goroutine
//	scheduled: something is queued, and the client waits for its
//	           flusher's next tick (it was written to a moment ago)
//	writing:   a writer goroutine runs and takes what is queued
//	closed:    nothing more is queued or written (the hub closes the
//	           connection, a write failed, or the read loop ended)
//
// send moves idle to writing, or to scheduled for a client written to
// within hotWindow (adaptive batching); the flusher's tick moves scheduled
// to writing; the writer goroutine moves writing back to idle when the queue
// is empty, or to closed when a write fails; closeWith and finish move any
// state to closed. closed is final.
type writer struct {
	mu    sync.Mutex // guards the fields below
	state wstate
	queue [][]byte // frames waiting to be written
	bytes int      // their size in all
	spare [][]byte // the last batch, kept for reuse
	// behind is when the queue last grew past SendQueue without the writer
	// taking it since; zero while it has not.
	behind time.Time
	code   websocket.StatusCode // the hub's close code, once closed by the hub
	pinger *time.Timer          // keepalive, nil when off
	// lastWrite is when the writer last finished a write: a client written
	// to a moment ago is busy, and its next messages are batched.
	lastWrite time.Time
	fl        *flusher // the flusher that batches this client's writes

	wg sync.WaitGroup // writer, pinger and closer goroutines
}

type wstate int

const (
	wIdle wstate = iota
	wScheduled
	wWriting
	wClosed
)

// idleQueueCap is the largest queue capacity an idle client keeps.
const idleQueueCap = 8

// maxBatchBytes bounds one batched frame; a larger batch is written as several.
const maxBatchBytes = 64 << 10

// frameOverhead is what a queued frame costs beyond its bytes, for the byte
// bound of a queue.
const frameOverhead = 32

// send queues frame for this client and reports whether it was queued. It
// never blocks. A client that has been behind for longer than SlowTimeout
// (more than SendQueue frames waiting, and the writer has not taken them),
// or whose queue holds more than SendQueueBytes, is cut off with 4000.
func (c *Client) send(frame []byte) bool {
	cfg := &c.hub.cfg
	w := &c.w
	w.mu.Lock()
	if w.state == wClosed {
		w.mu.Unlock()
		return false
	}
	w.queue = append(w.queue, frame)
	w.bytes += len(frame) + frameOverhead
	slow := w.bytes > cfg.SendQueueBytes
	if !slow && len(w.queue) > cfg.SendQueue {
		now := time.Now()
		if w.behind.IsZero() {
			w.behind = now
			c.hub.behind.Add(1)
		} else if now.Sub(w.behind) > cfg.SlowTimeout && !c.hub.overloaded() {
			// Behind for long, while most others keep up: this reader is
			// slow. When many are behind the node is, not they: they are
			// not cut for it (the byte bound still holds).
			slow = true
		}
	}
	if slow {
		w.mu.Unlock()
		c.hub.metrics.overflows.Inc()
		c.close(wire.StatusSlowConsumer, "slow consumer: fell behind its messages")
		return false
	}
	if w.state == wIdle {
		if c.hub.cfg.WriteCoalesce == 0 && w.fl != nil && !w.lastWrite.IsZero() && time.Since(w.lastWrite) < hotWindow {
			// Written to a moment ago: let what follows join this message,
			// and write them all at the flusher's next tick.
			w.state = wScheduled
			w.wg.Add(1)
			w.mu.Unlock()
			w.fl.add(c)
			return true
		}
		w.state = wWriting
		w.wg.Add(1)
		go c.writeLoop()
	}
	w.mu.Unlock()
	return true
}

// flushScheduled starts the writer of a client that waited for a tick.
func (c *Client) flushScheduled() {
	w := &c.w
	w.mu.Lock()
	if w.state != wScheduled {
		// Closed meanwhile: the writer never runs; give its place back.
		w.mu.Unlock()
		w.wg.Done()
		return
	}
	w.state = wWriting
	w.mu.Unlock()
	go c.writeLoop()
}

// closeWith moves the writer to closed for a close the hub makes with code,
// dropping what is queued. It reports false when it was closed already.
func (w *writer) closeWith(code websocket.StatusCode) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == wClosed {
		return false
	}
	w.state = wClosed
	w.code = code
	w.queue, w.bytes = nil, 0
	// The behind count is settled by finish, at the end of the read loop.
	if w.pinger != nil {
		w.pinger.Stop()
	}
	return true
}

// caughtUpLocked records that the writer took the queue: the client is not
// behind any more. w.mu must be held.
func (w *writer) caughtUpLocked(h *Hub) {
	if !w.behind.IsZero() {
		w.behind = time.Time{}
		h.behind.Add(-1)
	}
}

// finish moves the writer to closed at the end of the read loop, and returns
// the close code the hub chose, or 0 when it chose none.
func (w *writer) finish(h *Hub) websocket.StatusCode {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.caughtUpLocked(h)
	w.state = wClosed
	w.queue, w.bytes = nil, 0
	if w.pinger != nil {
		w.pinger.Stop()
	}
	return w.code
}

// writeLoop writes what is queued, batching every frame waiting into one
// newline-separated WebSocket frame, until the queue is empty.
func (c *Client) writeLoop() {
	w := &c.w
	defer w.wg.Done()
	if d := c.hub.cfg.WriteCoalesce; d > 0 {
		// Let more messages join this one: one frame, one syscall for all.
		time.Sleep(d)
	}
	var batch [][]byte
	for {
		w.mu.Lock()
		if batch != nil {
			clear(batch)
			w.spare = batch[:0]
		}
		if w.state == wClosed {
			w.mu.Unlock()
			return
		}
		if len(w.queue) == 0 {
			w.state = wIdle
			if cap(w.queue) > idleQueueCap {
				w.queue = nil
			}
			if cap(w.spare) > idleQueueCap {
				w.spare = nil
			}
			w.mu.Unlock()
			return
		}
		batch, w.queue, w.spare = w.queue, w.spare, nil
		w.bytes = 0
		w.caughtUpLocked(c.hub)
		w.mu.Unlock()

		err := c.writeBatch(batch)
		w.mu.Lock()
		w.lastWrite = time.Now()
		w.mu.Unlock()
		if err != nil {
			w.mu.Lock()
			w.state = wClosed
			w.queue, w.bytes = nil, 0
			w.mu.Unlock()
			c.cut()
			return
		}
	}
}

var writeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeBatch writes frames as few WebSocket frames as maxBatchBytes allows,
// each write bounded by WriteTimeout.
func (c *Client) writeBatch(frames [][]byte) error {
	if len(frames) == 1 {
		return c.write(frames[0])
	}
	buf := writeBufs.Get().(*bytes.Buffer)
	defer writeBufs.Put(buf)
	buf.Reset()
	for _, f := range frames {
		if buf.Len() > 0 && buf.Len()+1+len(f) > maxBatchBytes {
			if err := c.write(buf.Bytes()); err != nil {
				return err
			}
			buf.Reset()
		}
		if buf.Len() > 0 {
			buf.WriteByte('\n')
		}
		buf.Write(f)
	}
	return c.write(buf.Bytes())
}

// write writes one frame within WriteTimeout. With the raw connection at hand
// the deadline is the socket's own: no context, timer or goroutine per write,
// and no lock shared with other clients (the hub's context). A stopped hub
// cuts the socket, which ends a write in progress.
func (c *Client) write(p []byte) error {
	if c.raw != nil {
		if err := c.raw.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteTimeout)); err != nil {
			return err
		}
		// Clear it after: a stale deadline would fail the next control frame
		// (a ping, the close of a drain) that coder/websocket writes itself.
		defer c.raw.SetWriteDeadline(time.Time{})
		return c.conn.Write(context.Background(), websocket.MessageText, p)
	}
	ctx, cancel := context.WithTimeout(c.hub.ctx, c.hub.cfg.WriteTimeout)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageText, p)
}

// Adaptive batching. A write syscall costs about as much as delivering ten
// messages in one frame, so a busy client's messages are better written
// together; an idle client's are written at once, with no added latency.
const (
	// hotWindow: a client written to less than this ago is busy.
	hotWindow = 2 * time.Millisecond
	// The flusher's tick grows from minTick to maxTick with the clients it
	// flushes per tick: the busier the node, the larger each batch.
	minTick = 500 * time.Microsecond
	maxTick = 5 * time.Millisecond
)

// flusher starts, at its next tick, the writers of busy clients that have
// messages queued. A hub has one per CPU; each client is bound to one.
type flusher struct {
	mu      sync.Mutex
	pending []*Client
	armed   bool
	tick    time.Duration
	timer   *time.Timer
}

func newFlusher() *flusher {
	f := &flusher{tick: minTick}
	f.timer = time.AfterFunc(time.Hour, f.flush)
	f.timer.Stop()
	return f
}

func (f *flusher) add(c *Client) {
	f.mu.Lock()
	f.pending = append(f.pending, c)
	if !f.armed {
		f.armed = true
		f.timer.Reset(f.tick)
	}
	f.mu.Unlock()
}

func (f *flusher) flush() {
	f.mu.Lock()
	pending := f.pending
	f.pending = nil
	f.armed = false
	// 1 client per tick: minTick; 200 or more: maxTick.
	f.tick = min(maxTick, max(minTick, time.Duration(len(pending))*maxTick/200))
	f.mu.Unlock()
	for _, c := range pending {
		c.flushScheduled()
	}
	clear(pending)
}
