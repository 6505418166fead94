package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/redis/go-redis/v9"
)

// Scenario 5: the same publish load (rooms of two members on two nodes,
// every room's first member publishing) through the suite's one Redis, then
// through a Redis Cluster of three primaries on this machine. What each
// Redis process spent on it (INFO CPU: used_cpu_user + used_cpu_sys, before
// and after) shows where the publish cost goes: on a cluster each room's
// script and SPUBLISH run on the one primary that owns its slot, so with the
// rooms spread over the slots each primary carries about a third. The
// absolute rate is capped by this machine's two cores, which the nodes, the
// load generator and every Redis share; the split is what shows the scaling.

// redisFigures are a Redis process's counters that the scenario compares.
type redisFigures struct {
	cpu     float64 // seconds
	scripts int64   // EVALSHA calls: publishes (and a few history reads)
}

func readRedis(ctx context.Context, addr string) (redisFigures, error) {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	info, err := c.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return redisFigures{}, fmt.Errorf("INFO on %s: %w", addr, err)
	}
	var f redisFigures
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "used_cpu_user:"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			f.cpu += n
		}
		if v, ok := strings.CutPrefix(line, "used_cpu_sys:"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			f.cpu += n
		}
		if v, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			calls, _, _ := strings.Cut(v, ",")
			f.scripts, _ = strconv.ParseInt(calls, 10, 64)
		}
	}
	return f, nil
}

// shardedRun runs l against two fresh nodes on the Redis that redisEnv
// names, and returns the report and what each of addrs spent meanwhile.
func (e *suiteEnv) shardedRun(l *load, redisEnv []string, addrs []string, name string) (*report, []redisFigures, error) {
	e.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	e.redisEnv = redisEnv
	defer func() { e.redisEnv = nil }()
	a, errA := e.startNode(name + "-a")
	b, errB := e.startNode(name + "-b")
	if errA != nil || errB != nil {
		return nil, nil, fmt.Errorf("start nodes: %v %v", errA, errB)
	}
	defer a.stop()
	defer b.stop()
	ctx := context.Background()
	var before []redisFigures
	for _, addr := range addrs {
		f, err := readRedis(ctx, addr)
		if err != nil {
			return nil, nil, err
		}
		before = append(before, f)
	}
	part := *l
	part.Targets = []string{a.addr, b.addr}
	part.SourceIPs = defaultSources("", part.Targets)
	var startFigures []redisFigures
	rep, err := measure(ctx, &part, 0, func() {
		// Count from when every member is in: the subscriptions are not the
		// publish cost.
		for _, addr := range addrs {
			f, _ := readRedis(ctx, addr)
			startFigures = append(startFigures, f)
		}
	})
	if err != nil {
		return nil, nil, err
	}
	if len(startFigures) == len(addrs) {
		before = startFigures
	}
	var spent []redisFigures
	for i, addr := range addrs {
		f, err := readRedis(ctx, addr)
		if err != nil {
			return nil, nil, err
		}
		spent = append(spent, redisFigures{cpu: f.cpu - before[i].cpu, scripts: f.scripts - before[i].scripts})
	}
	return rep, spent, nil
}

// sharded is scenario 5.
func (e *suiteEnv) sharded(quick bool) ([]row, error) {
	rooms, rate, duration := 600, 3000.0, 10*time.Second
	if quick {
		rooms, rate, duration = 60, 300, 3*time.Second
	}
	l := &load{Members: 2 * rooms, Rooms: rooms, MembersPublish: true, Rate: rate, Duration: duration,
		Payload: 100, Prefix: "shard:"}

	e.logf("sharded: %d rooms of 2 members, %.0f publishes/s for %v, one Redis", rooms, rate, duration)
	one, oneSpent, err := e.shardedRun(l, nil, []string{e.redisAddr}, "bench-one")
	if err != nil {
		return nil, err
	}
	addrs, stop, err := hubtest.StartRedisCluster(3)
	if err != nil {
		return nil, err
	}
	defer stop()
	e.logf("sharded: the same on a Redis Cluster of 3 primaries %v", addrs)
	three, spent, err := e.shardedRun(l, []string{"HUB_REDIS_CLUSTER=" + strings.Join(addrs, ",")}, addrs, "bench-shard")
	if err != nil {
		return nil, err
	}
	var total float64
	var scripts int64
	for _, s := range spent {
		total += s.cpu
		scripts += s.scripts
	}
	var cpu, shares, calls []string
	for _, s := range spent {
		cpu = append(cpu, fmt.Sprintf("%.2f", s.cpu))
		shares = append(shares, fmt.Sprintf("%.0f%%", 100*s.cpu/max(total, 1e-9)))
		calls = append(calls, fmt.Sprintf("%.0f%%", 100*float64(s.scripts)/float64(max(scripts, 1))))
	}
	sent := func(r *report) int64 {
		var n int64
		for _, v := range r.Result.Sent {
			n += v
		}
		return n
	}
	e.logf("  one Redis: %.2f s CPU for %d publishes; cluster: %s s (%s)", oneSpent[0].cpu, sent(one), strings.Join(cpu, " / "), strings.Join(shares, " / "))
	return []row{
		{"6 sharded", fmt.Sprintf("Redis CPU s, one Redis (%d publishes at %.0f/s, %d rooms)", sent(one), rate, rooms), "",
			fmt.Sprintf("%.2f s (%.1f µs per publish)", oneSpent[0].cpu, 1e6*oneSpent[0].cpu/float64(max(sent(one), 1)))},
		{"6 sharded", fmt.Sprintf("Redis CPU s per primary, 3-shard cluster (%d publishes, same load)", sent(three)), "about 1/3 each",
			fmt.Sprintf("%s s = %.2f s; shares %s", strings.Join(cpu, " / "), total, strings.Join(shares, " / "))},
		{"6 sharded", "publish scripts run per primary (EVALSHA)", "about 1/3 each", strings.Join(calls, " / ")},
		{"6 sharded", "missing / duplicated / unexpected, one Redis and cluster", "0 / 0 / 0",
			fmt.Sprintf("%d / %d / %d and %d / %d / %d", one.Missing, one.Result.Duplicates, one.Excess,
				three.Missing, three.Result.Duplicates, three.Excess)},
		{"6 sharded", "p50 / p99, one Redis and cluster", "", fmt.Sprintf("%.1f / %.1f ms and %.1f / %.1f ms", one.P50, one.P99, three.P50, three.P99)},
	}, nil
}
