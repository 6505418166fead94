package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// stats are a node's figures from its /metrics.
type stats struct {
	RSS        float64 `json:"rss_bytes"`
	Goroutines float64 `json:"goroutines"`
	Subs       float64 `json:"redis_subscriptions"`
}

func nodeStats(targets []string) map[string]stats {
	out := map[string]stats{}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, t := range targets {
		resp, err := client.Get("http://" + t + "/metrics")
		if err != nil {
			continue
		}
		var s stats
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			name, v, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				continue
			}
			f, _ := strconv.ParseFloat(v, 64)
			switch name {
			case "process_resident_memory_bytes":
				s.RSS = f
			case "go_goroutines":
				s.Goroutines = f
			case "hub_redis_subscriptions":
				s.Subs = f
			}
		}
		resp.Body.Close()
		out[t] = s
	}
	return out
}

// report is one measurement, for the table and -json.
type report struct {
	Load   load             `json:"load"`
	Before map[string]stats `json:"before"`
	After  map[string]stats `json:"after"`
	Result *result          `json:"result"`

	Expected      int64   `json:"expected"`
	Missing       int64   `json:"missing"`
	Excess        int64   `json:"excess"` // unique deliveries beyond what was expected: a counting or routing fault
	DeliveriesSec float64 `json:"deliveries_per_sec"`
	P50           float64 `json:"p50_ms"`
	P90           float64 `json:"p90_ms"`
	P99           float64 `json:"p99_ms"`
	P999          float64 `json:"p999_ms"`
	RSSPerConnKiB float64 `json:"rss_per_conn_kib"`
	GorPerConn    float64 `json:"goroutines_per_conn"`
}

func (r *report) finish() {
	res := r.Result
	if !r.Load.Hold {
		r.Expected = r.Load.expected(res.Sent)
		unique := res.Received - res.Duplicates - res.Reordered
		r.Missing = max(0, r.Expected-unique)
		r.Excess = max(0, unique-r.Expected)
		if res.Elapsed > 0 {
			r.DeliveriesSec = float64(res.Received) / res.Elapsed.Seconds()
		}
		ms := func(q float64) float64 { return float64(res.Latency.quantile(q)) / 1e6 }
		r.P50, r.P90, r.P99, r.P999 = ms(0.5), ms(0.9), ms(0.99), ms(0.999)
	}
	var drss, dgor float64
	for t, a := range r.After {
		drss += a.RSS - r.Before[t].RSS
		dgor += a.Goroutines - r.Before[t].Goroutines
	}
	if res.Connected > 0 {
		r.RSSPerConnKiB = drss / float64(res.Connected) / 1024
		r.GorPerConn = dgor / float64(res.Connected)
	}
}

func (r *report) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	res := r.Result
	fmt.Fprintf(tw, "connections held\t%d (%d failed)\n", res.Connected, res.ConnectErrs)
	fmt.Fprintf(tw, "RSS per connection\t%.1f KiB\n", r.RSSPerConnKiB)
	fmt.Fprintf(tw, "goroutines per connection\t%.2f\n", r.GorPerConn)
	if r.Load.Hold {
		fmt.Fprintf(tw, "closes by code\t%v\n", res.Closes)
		fmt.Fprintf(tw, "first to last close\t%v\n", res.CloseSpan.Round(time.Millisecond))
	} else {
		fmt.Fprintf(tw, "deliveries/s\t%.0f\n", r.DeliveriesSec)
		fmt.Fprintf(tw, "delivered\t%d of %d expected (missing %d, duplicated %d, out of order %d, unexpected %d)\n",
			res.Received, r.Expected, r.Missing, res.Duplicates, res.Reordered, r.Excess)
		fmt.Fprintf(tw, "latency p50 / p90 / p99 / p99.9\t%.2f / %.2f / %.2f / %.2f ms\n", r.P50, r.P90, r.P99, r.P999)
		if res.Errors > 0 || res.WriteFails > 0 {
			fmt.Fprintf(tw, "rejected\t%d error replies, %d publishes not written (a node's HUB_CLIENT_RATE? see its /metrics)\n", res.Errors, res.WriteFails)
		}
	}
	tw.Flush()
}
