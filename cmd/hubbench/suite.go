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
	targetDeliveries   = 500_000.0
	targetP99AtHalfMs  = 25.0
	fanoutP99LimitMs   = 100.0
	suiteRoomsRate     = 10_000.0
	suiteStepDuration  = 5 * time.Second
	suiteRoomsDuration = 10 * time.Second
	// suiteCoalesce is the nodes' HUB_WRITE_COALESCE: batching a busy client's
	// messages into one frame is the main lever on fan-out throughput.
	suiteCoalesce = "5ms"
)

type suiteEnv struct {
	nodeBin   string
	redisAddr string
	prefix    string // one channel prefix per scenario: its nodes share rooms
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

	idleConns, fanMembers, rooms, drainConns := 15000, 1000, 10000, 10000
	rates := []float64{100, 200, 400, 600, 800, 1000, 1250, 1500, 2000, 2500}
	if quick {
		idleConns, fanMembers, rooms, drainConns = 2000, 200, 500, 1000
		rates = []float64{50, 200}
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

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 2. Fan-out: one room over two nodes, rate stepped up.
	{
		a, errA := env.startNode("bench-a")
		b, errB := env.startNode("bench-b")
		if errA != nil || errB != nil {
			return fmt.Errorf("start nodes: %v %v", errA, errB)
		}
		var best *report
		var bestRate float64
		for _, rate := range rates {
			env.logf("fan-out: %d members, %.0f publishes/s", fanMembers, rate)
			rep, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: fanMembers, Rooms: 1,
				Publishers: 4, Rate: rate, Duration: suiteStepDuration, Payload: 100, Prefix: fmt.Sprintf("fan%.0f:", rate),
				SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
			if err != nil {
				return err
			}
			env.logf("  %.0f deliveries/s, p99 %.1f ms, missing %d, duplicated %d", rep.DeliveriesSec, rep.P99, rep.Missing, rep.Result.Duplicates)
			if rep.P99 > fanoutP99LimitMs || rep.Missing > 0 || rep.Result.Duplicates > 0 || rep.Excess > 0 {
				break
			}
			best, bestRate = rep, rate
		}
		if best == nil {
			add(row{"2 fan-out", "highest sustained deliveries/s", fmt.Sprintf(">= %.0f", targetDeliveries), "none: the lowest step failed"})
		} else {
			half, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: fanMembers, Rooms: 1,
				Publishers: 4, Rate: bestRate / 2, Duration: suiteStepDuration, Payload: 100, Prefix: "fanhalf:",
				SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
			if err != nil {
				return err
			}
			add(row{"2 fan-out", fmt.Sprintf("highest sustained deliveries/s (%d members, 2 nodes)", fanMembers), fmt.Sprintf(">= %.0f", targetDeliveries),
				fmt.Sprintf("%.0f (%.0f publishes/s)", best.DeliveriesSec, bestRate)},
				row{"2 fan-out", "p50 / p99 at half that rate", fmt.Sprintf("p99 <= %.0f ms", targetP99AtHalfMs), fmt.Sprintf("%.2f / %.2f ms", half.P50, half.P99)},
				row{"2 fan-out", "missing / duplicated / unexpected below saturation", "0 / 0 / 0", fmt.Sprintf("%d / %d / %d", half.Missing, half.Result.Duplicates, half.Excess)})
		}
		a.stop()
		b.stop()
	}

	env.prefix = fmt.Sprintf("bench%d:", time.Now().UnixNano())
	// 3. Many rooms of two members, one on each node, cross-node publishes.
	{
		a, errA := env.startNode("bench-a")
		b, errB := env.startNode("bench-b")
		if errA != nil || errB != nil {
			return fmt.Errorf("start nodes: %v %v", errA, errB)
		}
		env.logf("many rooms: %d rooms of 2 members, %.0f publishes/s", rooms, suiteRoomsRate)
		rep, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: 2 * rooms, Rooms: rooms,
			MembersPublish: true, Rate: suiteRoomsRate, Duration: suiteRoomsDuration, Payload: 100, Prefix: "pair:",
			SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
		a.stop()
		b.stop()
		if err != nil {
			return err
		}
		add(row{"3 many rooms", fmt.Sprintf("deliveries/s (%d rooms x 2, cross-node)", rooms), "", fmt.Sprintf("%.0f (p99 %.1f ms)", rep.DeliveriesSec, rep.P99)},
			row{"3 many rooms", "missing / duplicated / unexpected", "0 / 0 / 0", fmt.Sprintf("%d / %d / %d", rep.Missing, rep.Result.Duplicates, rep.Excess)},
			row{"3 many rooms", "Redis channel subscriptions per node", fmt.Sprintf("%d", rooms), fmt.Sprintf("%.0f / %.0f", rep.After[a.addr].Subs, rep.After[b.addr].Subs)})
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

	fmt.Fprintf(out, "hubbench suite, %s, %d cores, Go %s, nodes with HUB_WRITE_COALESCE=%s\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), suiteCoalesce)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tfigure\ttarget\tresult")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.scenario, r.figure, r.target, r.result)
	}
	return tw.Flush()
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
func (e *suiteEnv) startNode(id string) (*benchNode, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.nodeBin)
	cmd.Env = append(os.Environ(), "HUB_ADDR="+addr, "HUB_NODE_ID="+id, "HUB_REDIS_URL=redis://"+e.redisAddr,
		"HUB_REDIS_PREFIX="+e.prefix, "HUB_LOG_LEVEL=error", "HUB_DRAIN_DELAY=0s",
		"HUB_CLIENT_RATE=0", "HUB_SEND_QUEUE=1024", "HUB_WRITE_COALESCE="+suiteCoalesce)
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
