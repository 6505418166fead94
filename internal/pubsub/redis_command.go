package pubsub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Scripts. A room's keys share one hash tag, so each script touches one slot.

// publishScript appends a message to a room's history and publishes it, in
// one atomic step. KEYS: meta, stream, idempotency key (or the meta again).
// ARGV: channel, data, history size, TTL in ms, a fresh epoch in case the
// room has none, "1" when an idempotency key is given. It returns {epoch,
// offset, duplicate}.
var publishScript = redis.NewScript(publishSource)

const publishSource = `
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 't', 0)
end
if ARGV[6] == '1' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {e, tonumber(prev), 1} end
end
local off = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[6] == '1' then redis.call('SET', KEYS[3], off, 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[1], 'h' .. e .. ' ' .. off .. '\n' .. ARGV[2])
return {e, off, 0}
`

// onceScript publishes a message once per idempotency key, with history
// off. KEYS: the key. ARGV: channel, payload, TTL in ms. It returns 1 for a
// duplicate.
var onceScript = redis.NewScript(onceSource)

const onceSource = `
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 0
end
return 1
`

// historyScript reads where a room's history stands and, with a count above
// 0, its messages from a start offset on; a room with no history gets a new
// epoch. KEYS: meta, stream. ARGV: a fresh epoch, TTL in ms, start offset,
// count. It returns {epoch, top, entries}.
var historyScript = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 't', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {e, 0, {}}
end
local t = tonumber(redis.call('HGET', KEYS[1], 't'))
if tonumber(ARGV[4]) == 0 then return {e, t, {}} end
return {e, t, redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', ARGV[4])}
`)

// leaseScript holds this node's id for this process: it returns the holder
// when another process holds it. KEYS: lease. ARGV: origin, TTL in ms.
var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ''
`)

// releaseScript gives the node's id back. KEYS: lease. ARGV: origin.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
`)

// The scripts of cluster mode publish with SPUBLISH: their channel hashes to
// the room's slot, like their keys.
var (
	publishScriptSharded = shardedScript(publishSource)
	onceScriptSharded    = shardedScript(onceSource)
)

var allScripts = append([]*redis.Script{publishScript, onceScript, historyScript, leaseScript, releaseScript,
	publishScriptSharded, onceScriptSharded, fenceScript}, presenceScripts...)

func shardedScript(src string) *redis.Script {
	return redis.NewScript(strings.Replace(src, "redis.call('PUBLISH'", "redis.call('SPUBLISH'", 1))
}

// once is a command go-redis must never send twice: a cluster client
// follows MOVED and ASK redirects (the command did not run) but, for a
// command marked NoRetry, resends none that may have run.
type once struct{ *redis.Cmd }

func (once) NoRetry() bool { return true }

// evalSha queues script on pipe, marked once, and returns its command.
func evalSha(pipe redis.Pipeliner, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", script.Hash(), len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	return process(pipe, cmdArgs...)
}

// process queues a command on pipe, marked once, and returns it.
func process(pipe redis.Pipeliner, args ...any) *redis.Cmd {
	cmd := redis.NewCmd(context.Background(), args...)
	pipe.Process(context.Background(), once{cmd})
	return cmd
}

// op is one command waiting for a round trip.
type op struct {
	queued time.Time
	// queue adds the op's command to pipe.
	queue func(pipe redis.Pipeliner) *redis.Cmd
	// finish is called once with the command's outcome.
	finish func(cmd *redis.Cmd, err error)
	cmd    *redis.Cmd
}

// Publish sends p and calls done with its receipt; it never blocks. With
// history on the message is appended to the room's stream and published by
// one script. Publications are pipelined with those of other callers; one
// caller's publications keep their order.
func (r *Redis) Publish(p Publication, done func(Receipt, error)) {
	sh, err := r.publishable(p.Room)
	if err != nil {
		r.count(sh, "unavailable")
		done(Receipt{}, unavailable(err))
		return
	}
	o := &op{queued: time.Now()}
	ttl := strconv.FormatInt(r.cfg.HistoryTTL.Milliseconds(), 10)
	sharded := r.mode == cluster
	switch {
	case r.cfg.HistorySize > 0:
		keys := []string{r.metaKey(p.Room), r.streamKey(p.Room), r.metaKey(p.Room)}
		hasKey := "0"
		if p.IdempotencyKey != "" {
			keys[2], hasKey = r.idemKey(p.Room, p.IdempotencyKey), "1"
		}
		args := []any{r.channel(p.Room), p.Data, r.cfg.HistorySize, ttl, newEpoch(), hasKey}
		script := publishScript
		if sharded {
			script = publishScriptSharded
		}
		o.queue = func(pipe redis.Pipeliner) *redis.Cmd { return evalSha(pipe, script, keys, args...) }
	case p.IdempotencyKey != "":
		keys := []string{r.idemKey(p.Room, p.IdempotencyKey)}
		args := []any{r.channel(p.Room), r.payload(p.Data), ttl}
		script := onceScript
		if sharded {
			script = onceScriptSharded
		}
		o.queue = func(pipe redis.Pipeliner) *redis.Cmd { return evalSha(pipe, script, keys, args...) }
	default:
		ch, payload := r.channel(p.Room), r.payload(p.Data)
		name := "publish"
		if sharded {
			name = "spublish"
		}
		o.queue = func(pipe redis.Pipeliner) *redis.Cmd { return process(pipe, name, ch, payload) }
	}
	o.finish = func(cmd *redis.Cmd, err error) {
		if err != nil {
			r.count(sh, outcomeLabel(err))
			done(Receipt{}, fmt.Errorf("pubsub: publish to %q: %w", p.Room, err))
			return
		}
		rc, err := parseReceipt(cmd, r.cfg.HistorySize > 0, p.IdempotencyKey != "")
		if err != nil {
			r.count(sh, "unavailable")
			done(Receipt{}, unavailable(fmt.Errorf("pubsub: publish to %q: %w", p.Room, err)))
			return
		}
		r.count(sh, "ok")
		if r.fencing && !rc.Duplicate {
			r.noteSeen(p.Room, rc.Epoch, rc.Offset, p.Data)
		}
		done(rc, nil)
	}
	select {
	case r.pubQ <- o:
	default:
		r.count(sh, "unavailable")
		done(Receipt{}, unavailable(errors.New("pubsub: the node's publish queue is full")))
	}
}

// count counts a publication's outcome, in all and for its shard.
func (r *Redis) count(sh *shard, outcome string) {
	r.metrics.publishes.WithLabelValues(outcome).Inc()
	if sh != nil {
		sh.m.publish(outcome)
	}
}

func outcomeLabel(err error) string {
	if errors.Is(err, ErrUncertain) {
		return "timeout"
	}
	return "unavailable"
}

// payload is what a room's channel carries with history off: the origin,
// so the node can drop its own messages, then the data.
func (r *Redis) payload(data []byte) []byte {
	b := make([]byte, 0, 2+len(r.cfg.Origin)+len(data))
	b = append(b, 'o')
	b = append(b, r.cfg.Origin...)
	b = append(b, '\n')
	return append(b, data...)
}

// parseMessage reads a payload from a room's channel.
func parseMessage(room, payload string) (Message, bool) {
	if len(payload) == 0 {
		return Message{}, false
	}
	head, data, ok := strings.Cut(payload[1:], "\n")
	if !ok {
		return Message{}, false
	}
	m := Message{Room: room, Data: []byte(data)}
	switch payload[0] {
	case 'o':
		m.Origin = head
	case 'h':
		epoch, off, ok := strings.Cut(head, " ")
		n, err := strconv.ParseUint(off, 10, 64)
		if !ok || err != nil || n == 0 {
			return Message{}, false
		}
		m.Epoch, m.Offset = epoch, n
	default:
		return Message{}, false
	}
	return m, true
}

func parseReceipt(cmd *redis.Cmd, history, keyed bool) (Receipt, error) {
	switch {
	case history:
		v, err := cmd.Slice()
		if err != nil || len(v) != 3 {
			return Receipt{}, fmt.Errorf("unexpected script reply %v: %v", v, err)
		}
		epoch, _ := v[0].(string)
		off, _ := v[1].(int64)
		dup, _ := v[2].(int64)
		if epoch == "" || off <= 0 {
			return Receipt{}, fmt.Errorf("unexpected script reply %v", v)
		}
		return Receipt{Epoch: epoch, Offset: uint64(off), Duplicate: dup == 1}, nil
	case keyed:
		n, err := cmd.Int64()
		return Receipt{Duplicate: n == 1}, err
	default:
		return Receipt{}, nil
	}
}

// Position returns where room's history stands, making its epoch if it has
// none yet.
func (r *Redis) Position(ctx context.Context, room string) (string, uint64, error) {
	h, err := r.read(ctx, room, 0, 0)
	return h.Epoch, h.Top, err
}

// History returns room's kept messages after offset after, at most limit,
// with where the history stands.
func (r *Redis) History(ctx context.Context, room string, after uint64, limit int) (History, error) {
	return r.read(ctx, room, after, max(limit, 1))
}

func (r *Redis) read(ctx context.Context, room string, after uint64, count int) (History, error) {
	if r.cfg.HistorySize == 0 {
		return History{}, ErrNoHistory
	}
	type result struct {
		h   History
		err error
	}
	res := make(chan result, 1)
	keys := []string{r.metaKey(room), r.streamKey(room)}
	args := []any{newEpoch(), strconv.FormatInt(r.cfg.HistoryTTL.Milliseconds(), 10),
		strconv.FormatUint(after+1, 10) + "-0", count}
	o := &op{queued: time.Now(),
		queue: func(pipe redis.Pipeliner) *redis.Cmd {
			return evalSha(pipe, historyScript, keys, args...)
		},
		finish: func(cmd *redis.Cmd, err error) {
			if err != nil {
				res <- result{err: err}
				return
			}
			h, err := parseHistory(room, cmd)
			res <- result{h, err}
		},
	}
	select {
	case r.readQ <- o:
	case <-ctx.Done():
		return History{}, fmt.Errorf("pubsub: history of %q: %w", room, ctx.Err())
	}
	select {
	case x := <-res:
		if x.err != nil {
			return History{}, fmt.Errorf("pubsub: history of %q: %w", room, x.err)
		}
		r.metrics.historyReads.Inc()
		r.metrics.historyEntries.Add(float64(len(x.h.Messages)))
		if r.fencing {
			if n := len(x.h.Messages); n > 0 {
				last := x.h.Messages[n-1]
				r.noteSeen(room, last.Epoch, last.Offset, last.Data)
			} else if x.h.Top > 0 && count == 0 {
				r.noteSeen(room, x.h.Epoch, x.h.Top, nil)
			}
		}
		return x.h, nil
	case <-ctx.Done():
		return History{}, fmt.Errorf("pubsub: history of %q: %w", room, ctx.Err())
	}
}

func parseHistory(room string, cmd *redis.Cmd) (History, error) {
	v, err := cmd.Slice()
	if err != nil || len(v) != 3 {
		return History{}, fmt.Errorf("unexpected history reply: %v", err)
	}
	epoch, _ := v[0].(string)
	top, _ := v[1].(int64)
	entries, _ := v[2].([]any)
	h := History{Epoch: epoch, Top: uint64(max(top, 0))}
	for _, e := range entries {
		pair, _ := e.([]any)
		if len(pair) != 2 {
			continue
		}
		id, _ := pair[0].(string)
		off, _, _ := strings.Cut(id, "-")
		n, err := strconv.ParseUint(off, 10, 64)
		if err != nil {
			continue
		}
		fields, _ := pair[1].([]any)
		for i := 0; i+1 < len(fields); i += 2 {
			if k, _ := fields[i].(string); k == "d" {
				d, _ := fields[i+1].(string)
				h.Messages = append(h.Messages, Message{Room: room, Epoch: epoch, Offset: n, Data: []byte(d)})
			}
		}
	}
	return h, nil
}

// commandLoop sends the ops of q, as many per round trip as are waiting.
// The publish loop keeps the order of its queue: a script Redis no longer
// caches is loaded and the ops it refused are sent again, in order, before
// any later one.
func (r *Redis) commandLoop(ctx context.Context, q chan *op, publishes bool) {
	batch := make([]*op, 0, r.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			r.failQueued(q, unavailable(ctx.Err()))
			return
		case o := <-q:
			batch = append(batch, o)
		}
	fill:
		for !(publishes && r.cfg.NoBatching) && len(batch) < cap(batch) {
			select {
			case o := <-q:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		r.exec(ctx, batch, publishes)
	}
}

// Backlog is how long publications wait for Redis now: the wait of the
// latest batch sent (kept for half a second), or how long the batch in flight
// has taken so far, whichever is longer. The hub refuses publishes while it
// is long, rather than queueing more.
func (r *Redis) Backlog() time.Duration {
	var d time.Duration
	if at := r.lastWaitAt.Load(); at != 0 && time.Since(time.Unix(0, at)) < 500*time.Millisecond {
		d = time.Duration(r.lastWait.Load())
	}
	if start := r.execStart.Load(); start != 0 {
		d = max(d, time.Since(time.Unix(0, start)))
	}
	return d
}

// exec sends batch in one round trip and finishes every op.
func (r *Redis) exec(ctx context.Context, batch []*op, publishes bool) {
	// An op that waited its whole time in the queue never reached Redis.
	live := batch[:0]
	now := time.Now()
	if publishes && len(batch) > 0 {
		r.lastWait.Store(int64(now.Sub(batch[0].queued)))
		r.lastWaitAt.Store(now.UnixNano())
		r.execStart.Store(now.UnixNano())
		defer r.execStart.Store(0)
	}
	for _, o := range batch {
		if now.Sub(o.queued) > r.cfg.Timeout {
			o.finish(nil, unavailable(errors.New("waited too long for Redis in the node's queue")))
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	if publishes {
		r.metrics.batchSize.Observe(float64(len(live)))
	}
	for attempt := 0; ; attempt++ {
		retry := r.execOnce(ctx, live, attempt == 0)
		if len(retry) == 0 {
			return
		}
		// NOSCRIPT: Redis ran none of them. Load the scripts, send them again.
		// (A cluster loads them on every primary it reaches; one it does
		// not reach fails the ops sent to it a second time.)
		if err := r.loadScripts(ctx); (err != nil && r.mode != cluster) || attempt > 0 {
			for _, o := range retry {
				o.finish(nil, unavailable(fmt.Errorf("scripts not loaded: %v", err)))
			}
			return
		}
		live = retry
	}
}

// execOnce sends ops and finishes each, except those Redis refused with
// NOSCRIPT, which it returns in order.
func (r *Redis) execOnce(ctx context.Context, ops []*op, first bool) (noscript []*op) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	pipe := r.client.Pipeline()
	for _, o := range ops {
		o.cmd = o.queue(pipe)
	}
	_, execErr := pipe.Exec(ctx)
	for _, o := range ops {
		err := o.cmd.Err()
		switch {
		case err == nil:
			o.finish(o.cmd, nil)
		case redis.HasErrorPrefix(err, "NOSCRIPT"):
			noscript = append(noscript, o)
		default:
			o.finish(nil, classify(err, execErr))
		}
	}
	return noscript
}

// classify says what a failed command's error means for its message: a
// reply from Redis or a failure before anything was written is
// ErrUnavailable; a failure after the command may have been written (a
// broken connection, a read that timed out) is ErrUncertain.
func classify(err, execErr error) error {
	if err == nil {
		err = execErr
	}
	var rerr redis.Error
	var nerr *net.OpError
	switch {
	case errors.As(err, &rerr):
		return unavailable(err) // Redis answered: it did not take it
	case errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted), errors.Is(err, redis.ErrClosed):
		return unavailable(err)
	case errors.As(err, &nerr) && nerr.Op == "dial":
		return unavailable(err)
	case (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) && !errors.As(err, &nerr):
		return unavailable(err) // the context ended before a write
	}
	return uncertain(err)
}

func (r *Redis) loadScripts(ctx context.Context) error {
	if r.mode == cluster {
		return r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			var errs []error
			for _, s := range allScripts {
				errs = append(errs, s.Load(ctx, c).Err())
			}
			return errors.Join(errs...)
		})
	}
	for _, s := range allScripts {
		if err := s.Load(ctx, r.client).Err(); err != nil {
			return err
		}
	}
	return nil
}

// failQueued answers every op still queued when the loop stops.
func (r *Redis) failQueued(q chan *op, err error) {
	for {
		select {
		case o := <-q:
			o.finish(nil, err)
		default:
			return
		}
	}
}
