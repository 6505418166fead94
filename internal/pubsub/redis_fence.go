package pubsub

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fencing (Cluster and Sentinel mode, history on). Redis replicates
// asynchronously: the replica that takes over from a failed primary may
// lack its last writes. A room's history then stands behind what this node
// already saw, and the new primary hands those offsets out again, for other
// messages; a node that delivered the lost ones would take the new ones for
// duplicates. So before a room that lost its subscription is reported to
// Resync, the broker checks that its history still holds the last message
// this node saw, at the same offset; when it does not, the room's history
// starts a new epoch, which every node reads as a gap.

// fenceScript starts a new epoch for a room whose history went back. KEYS:
// meta, stream. ARGV: the epoch and offset of the last message seen, its
// data, "1" when the data is known, a fresh epoch, the TTL in ms. It
// returns 1 when it started a new epoch.
var fenceScript = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if e ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
local back = tonumber(redis.call('HGET', KEYS[1], 't')) < n
if not back and ARGV[4] == '1' then
  local r = redis.call('XRANGE', KEYS[2], n .. '-0', n .. '-0')
  if #r == 1 then
    local f = r[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'd' and f[i + 1] ~= ARGV[3] then back = true end
    end
  end
end
if not back then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[5], 't', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
`)

// noteSeen records a message of room this node received or read back (data
// nil when only its offset is known).
func (r *Redis) noteSeen(room, epoch string, off uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rooms[room]
	if s == nil {
		return
	}
	switch {
	case s.seen.epoch != epoch || off > s.seen.off:
		s.seen = seen{epoch, off, data}
	case off == s.seen.off && s.seen.data == nil:
		s.seen.data = data
	}
}

// fenceLoop checks the rooms resync queues, then reports them to sink,
// until ctx ends.
func (r *Redis) fenceLoop(ctx context.Context, sink Sink) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.fenceKick:
		}
		r.fenceMu.Lock()
		rooms := r.fenceQ
		r.fenceQ = nil
		r.fenceMu.Unlock()
		if len(rooms) == 0 {
			continue
		}
		r.fence(ctx, rooms)
		sink.Resync(rooms)
	}
}

// fence runs fenceScript for every room that has a message seen, pipelined,
// and waits for the answers (a failure leaves the room as it is: the
// subscription is lost again, or Redis is down).
func (r *Redis) fence(ctx context.Context, rooms []string) {
	answered := make(chan struct{}, len(rooms))
	sent := 0
	ttl := strconv.FormatInt(r.cfg.HistoryTTL.Milliseconds(), 10)
	for _, room := range rooms {
		r.mu.Lock()
		var sn seen
		if s := r.rooms[room]; s != nil {
			sn = s.seen
		}
		r.mu.Unlock()
		if sn.off == 0 {
			continue
		}
		hasData := "0"
		if sn.data != nil {
			hasData = "1"
		}
		keys := []string{r.metaKey(room), r.streamKey(room)}
		args := []any{sn.epoch, strconv.FormatUint(sn.off, 10), sn.data, hasData, newEpoch(), ttl}
		o := &op{queued: time.Now(),
			queue: func(pipe redis.Pipeliner) *redis.Cmd { return evalSha(pipe, fenceScript, keys, args...) },
			finish: func(cmd *redis.Cmd, err error) {
				defer func() { answered <- struct{}{} }()
				if err != nil {
					r.log.Debug("history check after a failover failed", "room", room, "err", err)
					return
				}
				if n, _ := cmd.Int64(); n == 1 {
					r.metrics.fences.Inc()
					r.log.Warn("history: the room's history went back (a failover lost its last writes): it starts a new epoch, members are told gap",
						"room", room, "seen", sn.off)
				}
			},
		}
		select {
		case r.readQ <- o:
			sent++
		case <-ctx.Done():
			return
		}
	}
	for range sent {
		select {
		case <-answered:
		case <-ctx.Done():
			return
		}
	}
}
