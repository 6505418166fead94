// Command hubbench is a load generator for hubcluster: it opens many WebSocket
// connections to one or more nodes, joins rooms, publishes at a fixed
// open-loop rate, and reports connections held, deliveries per second, missing
// and duplicated messages (sequence numbers in the payloads), publish-to-deliver
// latency, and the nodes' memory and goroutines from their /metrics.
//
//	hubbench -targets 127.0.0.1:8080 -members 1000 -rooms 1 -publishers 4 -rate 200 -duration 10s
//	hubbench -suite   # what make bench runs: Redis, two nodes, the fixed scenarios
//	hubbench -suite -sharded   # only the one against a 3-shard Redis Cluster
//
// Connections are spread over -source-ips (127.0.0.x on loopback, so ephemeral
// ports do not run out) and over -procs worker processes (each process may hold
// about 19,900 sockets).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "hubbench:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("hubbench", flag.ContinueOnError)
	var (
		targets    = fs.String("targets", "127.0.0.1:8080", "comma-separated node addresses (host:port)")
		members    = fs.Int("members", 1000, "member connections")
		rooms      = fs.Int("rooms", 1, "rooms; member i joins room i%rooms")
		publishers = fs.Int("publishers", 4, "publisher connections (ignored with -members-publish)")
		membersPub = fs.Bool("members-publish", false, "the first member of every room publishes, instead of extra publishers")
		rate       = fs.Float64("rate", 100, "publishes per second, all publishers together")
		duration   = fs.Duration("duration", 10*time.Second, "how long to publish")
		payload    = fs.Int("payload", 100, "payload size in bytes")
		prefix     = fs.String("prefix", "bench:", "room name prefix")
		sources    = fs.String("source-ips", "", "comma-separated local addresses to dial from (default: 127.0.0.1-127.0.0.8 for loopback targets)")
		procs      = fs.Int("procs", 0, "worker processes (default: one per 15,000 connections)")
		token      = fs.String("token", "", "connection token (?token=)")
		hold       = fs.Bool("hold", false, "connect, then hold the connections until the nodes close them (measure a drain)")
		asJSON     = fs.Bool("json", false, "print JSON instead of a table")
		worker     = fs.Bool("worker", false, "internal: run as a worker process")
		suite      = fs.Bool("suite", false, "run the make bench suite: starts Redis and nodes on loopback")
		nodeBin    = fs.String("node", "bin/node", "with -suite: the node binary")
		quick      = fs.Bool("quick", false, "with -suite: smaller scenarios, for a smoke run")
		perMember  = fs.Int("rooms-per-member", 1, "rooms each member joins (above 1: spread pseudo-randomly, publishers are the first -publishers members)")
		churn      = fs.Float64("churn", 0, "share of memberships that leave and join again every second while publishing (0.05: 5%)")
		sharded    = fs.Bool("sharded", false, "with -suite: only scenario 6 (one Redis against a 3-shard Redis Cluster)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *worker {
		return runWorker(os.Stdin, out)
	}
	if *suite && *sharded {
		return runSharded(*nodeBin, *quick, out)
	}
	if *suite {
		return runSuite(*nodeBin, *quick, out)
	}
	l := &load{
		Targets: strings.Split(*targets, ","), Members: *members, Rooms: max(1, *rooms), Publishers: *publishers,
		MembersPublish: *membersPub, Rate: *rate, Duration: *duration, Payload: *payload, Prefix: *prefix,
		Token: *token, Hold: *hold, RoomsPerMember: *perMember, Churn: *churn,
	}
	l.SourceIPs = defaultSources(*sources, l.Targets)
	rep, err := measure(context.Background(), l, *procs, nil)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(out).Encode(rep)
	}
	rep.print(out)
	return nil
}

func defaultSources(flagValue string, targets []string) []string {
	if flagValue != "" {
		return strings.Split(flagValue, ",")
	}
	for _, t := range targets {
		if !strings.HasPrefix(t, "127.") && !strings.HasPrefix(t, "localhost") {
			return nil
		}
	}
	var ips []string
	for i := 1; i <= 8; i++ {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", i))
	}
	return ips
}

// measure runs l over procs worker processes (inline when one is enough) and
// reports the merged result with the targets' memory before and after.
// started, if set, is called once every connection is up.
func measure(ctx context.Context, l *load, procs int, started func()) (*report, error) {
	conns := l.Members + l.Publishers
	if procs <= 0 {
		procs = (conns + 14999) / 15000
	}
	rep := &report{Load: *l, Before: nodeStats(l.Targets)}
	if procs == 1 {
		part := *l
		part.Lo, part.Hi = 0, l.Members
		rep.Result = part.run(ctx, func() {
			rep.After = nodeStats(l.Targets)
			if started != nil {
				started()
			}
		})
		rep.finish()
		return rep, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	type proc struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
	}
	var ps []proc
	defer func() {
		for _, p := range ps { // a worker an error path left running
			if p.cmd.ProcessState == nil {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
		}
	}()
	for k := range procs {
		part := *l
		part.Lo, part.Hi = l.Members*k/procs, l.Members*(k+1)/procs
		cmd := exec.Command(self, "-worker")
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		o, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		json.NewEncoder(in).Encode(part)
		ps = append(ps, proc{cmd, in, bufio.NewReader(o)})
	}
	for _, p := range ps { // every worker connected
		if _, err := p.out.ReadString('\n'); err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
	}
	rep.After = nodeStats(l.Targets)
	if started != nil {
		started()
	}
	for _, p := range ps {
		io.WriteString(p.in, "go\n")
	}
	rep.Result = newResult()
	for _, p := range ps {
		var r result
		if err := json.NewDecoder(p.out).Decode(&r); err != nil {
			return nil, fmt.Errorf("worker result: %w", err)
		}
		rep.Result.merge(&r)
		p.in.Close()
		p.cmd.Wait()
	}
	rep.finish()
	return rep, nil
}

// runWorker reads its part of a load from in, connects, says "ready", waits
// for "go", runs, and writes its result as JSON.
func runWorker(in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	var l load
	if err := json.NewDecoder(br).Decode(&l); err != nil {
		return err
	}
	res := l.run(context.Background(), func() {
		fmt.Fprintln(out, `{"ready":true}`)
		for {
			line, err := br.ReadString('\n')
			if err != nil || strings.TrimSpace(line) == "go" {
				return
			}
		}
	})
	return json.NewEncoder(out).Encode(res)
}
