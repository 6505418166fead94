package pubsub

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/redis/go-redis/v9"
)

// redisCalls returns how many commands Redis has run (INFO commandstats,
// which counts the commands a script runs too), the INFO calls themselves
// not counted, and how many of them were PUBLISH and EVALSHA.
func redisCalls(tb testing.TB, c *redis.Client) (total, publishes, scripts int) {
	tb.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || name == "cmdstat_info" {
			continue
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		total += n
		switch name {
		case "cmdstat_publish":
			publishes = n
		case "cmdstat_evalsha":
			scripts = n
		}
	}
	return total, publishes, scripts
}

// BenchmarkRedisPresenceJoinLeave measures what presence costs Redis: the
// script calls per join and per leave (one each), the commands Redis runs
// in all per join and per leave (the scripts' own included, and the node's
// heartbeat and probes meanwhile), and the events published, in a room
// nobody watches and in one a member watches. Each change is written on its
// own (the worst case: under load many go out per round trip); ns/op is the
// wait for it, not Redis's time.
func BenchmarkRedisPresenceJoinLeave(b *testing.B) {
	addr := hubtest.RedisServer(b)
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	for _, watched := range []bool{false, true} {
		name := "unwatched"
		if watched {
			name = "watched"
		}
		b.Run(name, func(b *testing.B) {
			br := runBroker(b, addr, "bench-"+name, "pb"+name+":", newPresenceRecorder())
			room := "room-" + name
			if watched {
				br.Watch(room)
			}
			// settle waits for the broker to have written every change,
			// without asking Redis (that would be counted).
			settle := func() {
				if !hubtest.Poll(time.Minute, func() bool {
					br.pres.mu.Lock()
					defer br.pres.mu.Unlock()
					return len(br.pres.dirty) == 0 && !br.pres.busy
				}) {
					b.Fatal("presence writes did not settle")
				}
			}
			// Warm: the room is listed for this node, the scripts loaded.
			br.Join(room, Member{Client: "warm", Node: "n"})
			settle()
			b.ResetTimer()
			before, pubBefore, evBefore := redisCalls(b, admin)
			for i := range b.N {
				br.Join(room, Member{Client: fmt.Sprintf("c%d", i), User: "u", Node: "n"})
				settle() // one at a time: the cost of a join on its own
			}
			mid, pubMid, evMid := redisCalls(b, admin)
			for i := range b.N {
				br.Leave(room, Member{Client: fmt.Sprintf("c%d", i)})
				settle()
			}
			after, pubAfter, evAfter := redisCalls(b, admin)
			b.StopTimer()
			b.ReportMetric(float64(evMid-evBefore)/float64(b.N), "scripts/join")
			b.ReportMetric(float64(evAfter-evMid)/float64(b.N), "scripts/leave")
			b.ReportMetric(float64(mid-before)/float64(b.N), "cmds/join")
			b.ReportMetric(float64(pubMid-pubBefore)/float64(b.N), "publishes/join")
			b.ReportMetric(float64(after-mid)/float64(b.N), "cmds/leave")
			b.ReportMetric(float64(pubAfter-pubMid)/float64(b.N), "publishes/leave")
		})
	}
}
