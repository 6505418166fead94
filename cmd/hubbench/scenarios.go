package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/client"
	"github.com/redis/go-redis/v9"
)

// fanout steps the publish rate up over two fresh nodes with v's settings
// until a step fails (p99 over the limit, anything missing or doubled), and
// returns the last step that held.
func (e *suiteEnv) fanout(v fanoutVariant, members int, rates []float64) (*report, float64, error) {
	a, errA := e.startNode("bench-a", v.env...)
	b, errB := e.startNode("bench-b", v.env...)
	if errA != nil || errB != nil {
		return nil, 0, fmt.Errorf("start nodes: %v %v", errA, errB)
	}
	defer a.stop()
	defer b.stop()
	var best *report
	var bestRate float64
	for _, rate := range rates {
		e.logf("fan-out [%s]: %d members, %.0f publishes/s", v.name, members, rate)
		rep, err := measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: members, Rooms: 1,
			Publishers: 4, Rate: rate, Duration: suiteStepDuration, Payload: 100, Prefix: fmt.Sprintf("fan%.0f:", rate),
			SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
		if err != nil {
			return nil, 0, err
		}
		e.logf("  %.0f deliveries/s, p50 %.1f ms, p99 %.1f ms, missing %d, duplicated %d", rep.DeliveriesSec, rep.P50, rep.P99, rep.Missing, rep.Result.Duplicates)
		if rep.P99 > fanoutP99LimitMs || rep.Missing > 0 || rep.Result.Duplicates > 0 || rep.Excess > 0 {
			break
		}
		best, bestRate = rep, rate
	}
	return best, bestRate, nil
}

// fanoutStep measures one rate over two fresh nodes with v's settings.
func (e *suiteEnv) fanoutStep(v fanoutVariant, members int, rate float64) (*report, error) {
	a, errA := e.startNode("bench-a", v.env...)
	b, errB := e.startNode("bench-b", v.env...)
	if errA != nil || errB != nil {
		return nil, fmt.Errorf("start nodes: %v %v", errA, errB)
	}
	defer a.stop()
	defer b.stop()
	e.logf("low rate [%s]: %d members, %.0f publishes/s", v.name, members, rate)
	return measure(context.Background(), &load{Targets: []string{a.addr, b.addr}, Members: members, Rooms: 1,
		Publishers: 4, Rate: rate, Duration: 2 * suiteStepDuration, Payload: 100, Prefix: "low:",
		SourceIPs: defaultSources("", []string{a.addr})}, 0, nil)
}

// metricSum adds up a metric line (name with labels, as exposed) over the
// targets' /metrics.
func metricSum(targets []string, name string) float64 {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	var sum float64
	for _, t := range targets {
		resp, err := client.Get("http://" + t + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			key, v, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			if key == name || (!strings.Contains(name, "{") && strings.HasPrefix(key, name+"{")) {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
		resp.Body.Close()
	}
	return sum
}

// redisCPU returns the CPU seconds Redis has used (INFO cpu).
func redisCPU(rc *redis.Client) float64 {
	info, err := rc.Info(context.Background(), "cpu").Result()
	if err != nil {
		return 0
	}
	var sum float64
	for _, line := range strings.Split(info, "\n") {
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
	}
	return sum
}

type recoveryResult struct {
	complete int
	took     time.Duration
	redisCPU float64
	reads    float64
}

// recovery has n clients, 100 to a room, each subscribe with since to a
// place msgs messages back, all at once, as a drained node's clients do when
// they come back; it measures until every one has its messages and its
// recovered ack.
func (e *suiteEnv) recovery(nd *benchNode, n, msgs int) (recoveryResult, error) {
	const perRoom = 100
	rooms := max(1, n/perRoom)
	ctx := context.Background()
	d := newDialer(defaultSources("", []string{nd.addr}))
	// One client per room learns its epoch and publishes msgs messages.
	epochs := make([]string, rooms)
	for r := range rooms {
		ws, err := d.dial(ctx, nd.addr, "")
		if err != nil {
			return recoveryResult{}, err
		}
		room := fmt.Sprintf("rec:%d", r)
		ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"subscribe","room":%q,"id":1}`, room))
		_, p, err := ws.Read(ctx)
		if err != nil {
			return recoveryResult{}, err
		}
		var ack struct{ Epoch string }
		json.Unmarshal(bytes.SplitN(p, []byte("\n"), 2)[0], &ack)
		epochs[r] = ack.Epoch
		var frame []byte
		for i := range msgs {
			if i > 0 {
				frame = append(frame, '\n')
			}
			frame = fmt.Appendf(frame, `{"type":"publish","room":%q,"data":{"n":%d}}`, room, i)
		}
		ws.Write(ctx, websocket.MessageText, frame)
		ws.Close(websocket.StatusNormalClosure, "")
	}
	time.Sleep(time.Second) // the publishes are stored
	rc := redis.NewClient(&redis.Options{Addr: e.redisAddr})
	defer rc.Close()
	cpu0 := redisCPU(rc)
	reads0 := metricSum([]string{nd.addr}, "hub_redis_history_reads_total")
	e.logf("recovery: %d clients recover %d messages each (the Go client, resubscribing from its place)", n, msgs)
	start := time.Now()
	var complete atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	var mu sync.Mutex
	var clients []*client.Client
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r := i % rooms
			var got atomic.Int64
			done := make(chan bool, 1)
			c, err := client.Dial(ctx, "ws://"+nd.addr+"/ws", &client.Options{
				HTTPClient:  d.clients[i%len(d.clients)],
				OnRecovered: func(_ string, _ int, ok bool) { done <- ok },
			})
			if err != nil {
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
			if _, err := c.SubscribeFrom(ctx, fmt.Sprintf("rec:%d", r), epochs[r], 0, func(client.Message) { got.Add(1) }); err != nil {
				return
			}
			select {
			case ok := <-done:
				if ok && got.Load() == int64(msgs) {
					complete.Add(1)
				}
			case <-time.After(60 * time.Second):
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	res := recoveryResult{complete: int(complete.Load()), took: took, redisCPU: redisCPU(rc) - cpu0,
		reads: metricSum([]string{nd.addr}, "hub_redis_history_reads_total") - reads0}
	var closing sync.WaitGroup
	for _, c := range clients {
		closing.Go(func() { c.Close() })
	}
	closing.Wait()
	return res, nil
}
