package hub

import (
	"strconv"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connections       prometheus.Gauge
	rooms             prometheus.Gauge
	received          prometheus.Counter
	published         prometheus.Counter
	publishFailures   *prometheus.CounterVec
	delivered         prometheus.Counter
	overflows         prometheus.Counter
	authFailures      prometheus.Counter
	forbidden         prometheus.Counter
	presenceEvents    prometheus.Counter
	presenceSnapshots prometheus.Counter
	rateLimited       prometheus.Counter
	refused           *prometheus.CounterVec
	backpressure      prometheus.Counter
	overloadRefusals  *prometheus.CounterVec
	behind            prometheus.GaugeFunc
	closes            *prometheus.CounterVec
	gaps              prometheus.Counter
	duplicates        prometheus.Counter
	fills             prometheus.Counter
	windowReads       prometheus.Counter
	recoveries        *prometheus.CounterVec
	recovered         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, behind func() float64) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_connections", Help: "WebSocket connections open on this node.",
		}),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_rooms", Help: "Rooms with at least one member on this node.",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_messages_in_total", Help: "Objects received from clients.",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_publishes_total", Help: "Messages published from this node (clients and POST /v1/publish) that the broker took.",
		}),
		publishFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_publish_failures_total", Help: "Publishes the broker did not take (reason unavailable: certainly not handed on) or did not confirm in time (reason timeout).",
		}, []string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_messages_out_total", Help: "Messages queued for clients on this node.",
		}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_queue_overflows_total", Help: "Clients cut off with 4000: behind their messages for too long, or over the byte bound of their queue.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_auth_failures_total", Help: "Connections refused or tokens rejected: bad, expired or missing token, authentication timeout.",
		}),
		forbidden: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_forbidden_total", Help: "Subscribes and publishes the connection's token does not grant, and rooms left after a narrowed token refresh.",
		}),
		presenceEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_presence_events_total", Help: "Joins and leaves that arrived for rooms with local members that asked for them.",
		}),
		presenceSnapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_presence_snapshots_total", Help: "Presence snapshots sent to a room's watchers after its subscription was lost and came back.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_rate_limited_total", Help: "Requests and pings rejected by the per-connection rate limit.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_requests_refused_total", Help: "Requests answered unavailable because the node could not take them now, by reason (inflight: too many publishes of the connection wait for the broker).",
		}, []string{"reason"}),
		backpressure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_read_backpressure_total", Help: "Times a connection's requests waited (and its read loop with them): the requests queued behind a subscribe, or its publishes waiting for the broker, filled their bound.",
		}),
		overloadRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_overload_refusals_total", Help: "Publishes refused because the node is overloaded, by reason (clients_behind: a tenth of the clients have more than HUB_SEND_QUEUE messages waiting; broker_backlog: publishes wait too long for Redis).",
		}, []string{"reason"}),
		behind: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hub_clients_behind", Help: "Clients with more than HUB_SEND_QUEUE messages waiting to be written.",
		}, behind),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_closes_total", Help: "Closed WebSocket connections by close code.",
		}, []string{"code"}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_gaps_total", Help: "Gaps told to the members of a room: messages that may be lost and will not be delivered.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_history_duplicates_total", Help: "Messages dropped because the room's members had them already (offset seen).",
		}),
		fills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_history_fills_total", Help: "History reads the node made to fill a hole in a room's offsets.",
		}),
		windowReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_history_window_reads_total", Help: "History reads of a room's whole window for recovering clients (shared by every client recovering at once).",
		}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_recoveries_total", Help: "Subscribes with since, by result: recovered, or gap (history did not cover it).",
		}, []string{"result"}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_recovered_messages_total", Help: "Messages delivered to clients from history by recovery.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.rooms, m.received, m.published, m.publishFailures,
		m.delivered, m.overflows, m.authFailures, m.forbidden, m.presenceEvents, m.presenceSnapshots, m.rateLimited, m.refused, m.backpressure, m.overloadRefusals, m.behind, m.closes,
		m.gaps, m.duplicates, m.fills, m.windowReads, m.recoveries, m.recovered} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func codeLabel(code websocket.StatusCode) string {
	return strconv.Itoa(int(code))
}
