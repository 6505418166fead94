package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
)

// The suite's targets, on this 2-core machine (BENCHMARKS.md explains them).
const (
	targetIdleKiB      = 12.0
	targetDeliveries   = 1_250_000.0 // what HUB_WRITE_COALESCE=5ms reached before adaptive batching
	fanoutP99LimitMs   = 100.0
	suiteStepDuration  = 5 * time.Second
	suiteRoomsDuration = 8 * time.Second
	lowRate            = 100.0
)

// fanoutVariant is one configuration of the nodes for the fan-out steps.
type fanoutVariant struct {
	name string
	env  []string
}

var fanoutVariants = []fanoutVariant{
	{"defaults (adaptive batching, history 100)", nil},
	{"defaults, history off", []string{"HUB_HISTORY_SIZE=0"}},
	{"HUB_WRITE_COALESCE=off (the old default)", []string{"HUB_WRITE_COALESCE=off", "HUB_HISTORY_SIZE=0"}},
	{"HUB_WRITE_COALESCE=5ms", []string{"HUB_WRITE_COALESCE=5ms"}},
}

type suiteEnv struct {
	nodeBin   string
	redisAddr string
	redisEnv  []string // the nodes' Redis settings, when not HUB_REDIS_URL of redisAddr
	prefix    string   // one channel prefix per scenario: its nodes share rooms
	log       io.Writer
	nodes     []*benchNode // every node started; stopNodes stops those still running
}

type row struct{ scenario, figure, target, result string }

// runSuite starts Redis and fresh nodes on loopback for each scenario, and
// prints one table. Every process it starts is stopped before it returns,
// whichever way it returns.
func runSuite(nodeBin string, quick bool, out io.Writer) error {
	env := &suiteEnv{nodeBin: nodeBin, log: os.Stderr}
	redisAddr, stopRedis, err := hubtest.StartRedisServer("--maxclients", "10000")
	if err != nil {
		return err
	}
	defer stopRedis()
	env.redisAddr = redisAddr
	defer env.stopNodes() // before Redis goes: nodes drain against it

	idleConns, fanMembers, rooms, roomMembers, drainConns, recoverers := 15000, 1000, 10000, 6000, 10000, 10000
	rates := []float64{250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000}
	roomRates := []float64{1000, 2000, 3000, 4000, 6000, 8000}
	if quick {
		idleConns, fanMembers, rooms, roomMembers, drainConns, recoverers = 2000, 200, 500, 300, 1000, 1000
		rates = []float64{50, 200}
		roomRates = []float64{200}
	}
	var rows []row
	add := func(r ...row) { rows = append(rows, r...) }

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 1. Idle connections on one node.
	{
		a, err := env.startNode("bench-a")
		if err != nil {
			return err
		}
		env.logf("idle: %d connections, one room each", idleConns)
		rep, err := measure(context.Background(), &load{Targets: []string{a.addr}, Members: idleConns, Rooms: idleConns,
			Prefix: "idle:", SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
		a.stop()
		if err != nil {
			return err
		}
		add(row{"1 idle", fmt.Sprintf("RSS per connection (%d conns)", rep.Result.Connected), fmt.Sprintf("<= %.0f KiB", targetIdleKiB), fmt.Sprintf("%.1f KiB", rep.RSSPerConnKiB)},
			row{"1 idle", "goroutines per connection", "", fmt.Sprintf("%.2f", rep.GorPerConn)})
	}

	// 2. Fan-out: one room over two nodes, rate stepped up, for each variant
	// of the nodes' settings.
	ceiling := map[string]float64{} // variant -> highest sustained deliveries/s
	var defaultRate float64
	for vi, v := range fanoutVariants {
		env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
		best, bestRate, err := env.fanout(v, fanMembers, rates)
		if err != nil {
			return err
		}
		scen := fmt.Sprintf("2 fan-out %c", 'a'+vi)
		if best == nil {
			add(row{scen, "highest sustained deliveries/s: " + v.name, "", "none: the lowest step failed"})
			continue
		}
		ceiling[v.name] = best.DeliveriesSec
		target := ""
		if vi == 0 {
			defaultRate = bestRate
			target = fmt.Sprintf(">= %.0f, and 2x the old default", targetDeliveries)
		}
		add(row{scen, fmt.Sprintf("highest sustained deliveries/s (%d members, 2 nodes): %s", fanMembers, v.name), target,
			fmt.Sprintf("%.0f (%.0f publishes/s, p99 %.1f ms, missing %d)", best.DeliveriesSec, bestRate, best.P99, best.Missing)})
	}
	if on, off := ceiling[fanoutVariants[0].name], ceiling[fanoutVariants[1].name]; off > 0 {
		add(row{"2 fan-out", "history on / history off (same run)", ">= 0.80", fmt.Sprintf("%.2f", on/off)})
	}
	if def, old := ceiling[fanoutVariants[0].name], ceiling[fanoutVariants[2].name]; old > 0 {
		add(row{"2 fan-out", "defaults / old default (same run)", ">= 2.00", fmt.Sprintf("%.2f", def/old)})
	}

	// 2x. Low rate: the latency a quiet room sees, defaults against no
	// batching at all.
	for _, v := range []fanoutVariant{fanoutVariants[0], fanoutVariants[2]} {
		env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
		rep, err := env.fanoutStep(v, fanMembers, lowRate)
		if err != nil {
			return err
		}
		add(row{"2 low rate", fmt.Sprintf("p50 / p99 at %.0f publishes/s: %s", lowRate, v.name), "p50 within 1 ms of the old default",
			fmt.Sprintf("%.2f / %.2f ms", rep.P50, rep.P99)})
	}

	// 2y. Overload: offered 4x the default variant's ceiling, the node says
	// so (refuses publishes) and cuts no member that reads as fast as the
	// others.
	if defaultRate > 0 {
		env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
		a, errA := env.startNode("bench-a")
		b, errB := env.startNode("bench-b")
		if errA != nil || errB != nil {
			return fmt.Errorf("start nodes: %v %v", errA, errB)
		}
		rate := 4 * defaultRate
		env.logf("overload: %d members, %.0f publishes/s offered (4x the ceiling)", fanMembers, rate)
		rep, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: fanMembers, Rooms: 1,
			Publishers: 16, Rate: rate, Duration: suiteStepDuration, Payload: 100, Prefix: "over:",
			SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
		if err != nil {
			return err
		}
		refused := metricSum([]string{a.addr, b.addr}, "hub_overload_refusals_total")
		cut := metricSum([]string{a.addr, b.addr}, `hub_closes_total{code="4000"}`)
		a.stop()
		b.stop()
		add(row{"2 overload", fmt.Sprintf("offered %.0f publishes/s (4x): refused explicitly / members cut", rate), "> 0 / 0",
			fmt.Sprintf("%.0f refused (%d error replies) / %.0f cut; %.0f deliveries/s", refused, rep.Result.Errors, cut, rep.DeliveriesSec)})
	}

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 3. Many small rooms with churn: members in 10 rooms each, spread over
	// two nodes, 5% of the memberships leaving and joining again every
	// second while publishing.
	{
		a, errA := env.startNode("bench-a", "HUB_MAX_ROOMS_PER_CLIENT=1000")
		b, errB := env.startNode("bench-b", "HUB_MAX_ROOMS_PER_CLIENT=1000")
		if errA != nil || errB != nil {
			return fmt.Errorf("start nodes: %v %v", errA, errB)
		}
		var best *report
		var bestRate float64
		for _, rate := range roomRates {
			env.logf("many rooms: %d members in %d rooms (10 each), 5%% churn, %.0f publishes/s", roomMembers, rooms, rate)
			rep, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: roomMembers, Rooms: rooms,
				RoomsPerMember: 10, Publishers: 200, Churn: 0.05, Rate: rate, Duration: suiteRoomsDuration, Payload: 100,
				Prefix: fmt.Sprintf("pair%.0f:", rate), SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
			if err != nil {
				return err
			}
			env.logf("  %.0f deliveries/s, p99 %.1f ms, errors %d", rep.DeliveriesSec, rep.P99, rep.Result.Errors)
			if rep.P99 > fanoutP99LimitMs || rep.Result.Errors > 0 || rep.Result.Duplicates > 0 {
				break
			}
			best, bestRate = rep, rate
		}
		a.stop()
		b.stop()
		if best == nil {
			add(row{"3 many rooms", "deliveries/s at p99 <= 100 ms", "", "none: the lowest step failed"})
		} else {
			add(row{"3 many rooms", fmt.Sprintf("deliveries/s at p99 <= 100 ms (%d rooms, %d members x 10 rooms, 5%%/s churn)", rooms, roomMembers), "",
				fmt.Sprintf("%.0f (%.0f publishes/s, p99 %.1f ms)", best.DeliveriesSec, bestRate, best.P99)},
				row{"3 many rooms", "duplicated / out of order", "0 / 0", fmt.Sprintf("%d / %d", best.Result.Duplicates, best.Result.Reordered)})
		}
	}

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 4. Drain: SIGTERM a node holding many clients.
	{
		a, err := env.startNode("bench-a")
		if err != nil {
			return err
		}
		env.logf("drain: %d clients", drainConns)
		var sigAt time.Time
		rep, err := measure(context.Background(), &load{Targets: []string{a.addr}, Members: drainConns, Rooms: 100, Hold: true,
			Prefix: "drain:", SourceIPs: defaultSources("", []string{a.addr})}, 0, func() {
			sigAt = time.Now()
			a.cmd.Process.Signal(syscall.SIGTERM)
		})
		if err != nil {
			return err
		}
		exitErr := a.wait()
		took := time.Since(sigAt)
		hints := rep.Result.Hints
		slices.Sort(hints)
		p := func(q float64) int64 {
			if len(hints) == 0 {
				return -1
			}
			return hints[int(q*float64(len(hints)-1))]
		}
		add(row{"4 drain", fmt.Sprintf("SIGTERM to exit, %d clients (HUB_DRAIN_DELAY=0)", drainConns), "< HUB_DRAIN_TIMEOUT (25s)", fmt.Sprintf("%v (exit: %v)", took.Round(time.Millisecond), errString(exitErr))},
			row{"4 drain", "closes by code", fmt.Sprintf("%d x 1012", drainConns), fmt.Sprintf("%v", rep.Result.Closes)},
			row{"4 drain", "reconnect hints p10 / p50 / p90", "spread over 0-5s", fmt.Sprintf("%d / %d / %d ms", p(0.1), p(0.5), p(0.9))})
	}

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 5. Recovery: clients that reconnect (after a drain) and each recover
	// 100 messages of their room, all at once.
	{
		a, err := env.startNode("bench-a")
		if err != nil {
			return err
		}
		rep, err := env.recovery(a, recoverers, 100)
		a.stop()
		if err != nil {
			return err
		}
		add(row{"5 recovery", fmt.Sprintf("%d clients recover %d messages each at once", recoverers, 100), "all complete",
			fmt.Sprintf("%d complete in %v", rep.complete, rep.took.Round(time.Millisecond))},
			row{"5 recovery", "Redis CPU seconds / history reads for it", "", fmt.Sprintf("%.2f s / %.0f reads", rep.redisCPU, rep.reads)})
	}

	// 6. The same publishes through one Redis and a 3-shard Redis Cluster.
	{
		r, err := env.sharded(quick)
		if err != nil {
			return err
		}
		add(r...)
	}

	return printRows(out, rows)
}

func printRows(out io.Writer, rows []row) error {
	fmt.Fprintf(out, "hubbench suite, %s, %d cores, Go %s, nodes with their defaults unless a row says otherwise\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version())
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tfigure\ttarget\tresult")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.scenario, r.figure, r.target, r.result)
	}
	return tw.Flush()
}

// runSharded runs scenario 6 alone (hubbench -suite -sharded).
func runSharded(nodeBin string, quick bool, out io.Writer) error {
	env := &suiteEnv{nodeBin: nodeBin, log: os.Stderr}
	redisAddr, stopRedis, err := hubtest.StartRedisServer("--maxclients", "10000")
	if err != nil {
		return err
	}
	defer stopRedis()
	env.redisAddr = redisAddr
	defer env.stopNodes()
	rows, err := env.sharded(quick)
	if err != nil {
		return err
	}
	return printRows(out, rows)
}

func errString(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

func (e *suiteEnv) logf(format string, args ...any) {
	fmt.Fprintf(e.log, "hubbench: "+format+"\n", args...)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// benchNode is a node process the suite started.
type benchNode struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // how it exited, set before done is closed
	once sync.Once
}

// startNode starts a node and waits until it is ready. The node is recorded
// in e before anything can fail, so stopNodes stops it on every path.
func (e *suiteEnv) startNode(id string, extra ...string) (*benchNode, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.nodeBin)
	redisEnv := e.redisEnv
	if redisEnv == nil {
		redisEnv = []string{"HUB_REDIS_URL=redis://" + e.redisAddr}
	}
	cmd.Env = append(append(os.Environ(), redisEnv...), "HUB_ADDR="+addr, "HUB_NODE_ID="+id,
		"HUB_REDIS_PREFIX="+e.prefix, "HUB_LOG_LEVEL=error", "HUB_DRAIN_DELAY=0s",
		"HUB_CLIENT_RATE=0", "HUB_MAX_HTTP_CONNECTIONS=0", "HUB_MAX_HTTP_CONNECTIONS_PER_IP=0")
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", e.nodeBin, err)
	}
	n := &benchNode{addr: addr, cmd: cmd, done: make(chan struct{})}
	e.nodes = append(e.nodes, n)
	go func() { n.err = cmd.Wait(); close(n.done) }()
	client := &http.Client{Timeout: time.Second}
	ready := hubtest.Poll(5*time.Second, func() bool {
		select {
		case <-n.done:
			return true // it will never be ready
		default:
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	client.CloseIdleConnections()
	select {
	case <-n.done:
		return nil, fmt.Errorf("node %s exited before it was ready: %v", id, n.err)
	default:
	}
	if !ready {
		n.stop()
		return nil, fmt.Errorf("node %s never became ready", id)
	}
	return n, nil
}

// stopNodes stops every node still running.
func (e *suiteEnv) stopNodes() {
	for _, n := range e.nodes {
		n.stop()
	}
}

// wait waits for the process to exit and returns how it exited.
func (n *benchNode) wait() error {
	<-n.done
	return n.err
}

// stop sends SIGTERM, and kills the node if it has not exited 30s later. It
// returns once the process has exited; calling it again returns at once.
func (n *benchNode) stop() {
	n.once.Do(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
		}
	})
}
