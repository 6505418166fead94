package hub

import (
	"strconv"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connections     prometheus.Gauge
	rooms           prometheus.Gauge
	received        prometheus.Counter
	published       prometheus.Counter
	publishFailures prometheus.Counter
	delivered       prometheus.Counter
	overflows       prometheus.Counter
	badPayloads     prometheus.Counter
	authFailures    prometheus.Counter
	forbidden       prometheus.Counter
	rateLimited     prometheus.Counter
	closes          *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
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
			Name: "hub_publishes_total", Help: "Messages published from this node (clients and POST /v1/publish).",
		}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_publish_failures_total", Help: "Publishes the broker did not take.",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_messages_out_total", Help: "Messages queued for clients on this node.",
		}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_queue_overflows_total", Help: "Clients cut off because their send queue overflowed.",
		}),
		badPayloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_bad_payloads_total", Help: "Broker payloads dropped because they were not in the node format.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_auth_failures_total", Help: "Connections refused or tokens rejected: bad, expired or missing token, authentication timeout.",
		}),
		forbidden: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_forbidden_total", Help: "Subscribes and publishes the connection's token does not grant.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_rate_limited_total", Help: "Requests rejected by the per-connection rate limit.",
		}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_closes_total", Help: "Closed WebSocket connections by close code.",
		}, []string{"code"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.rooms, m.received, m.published,
		m.publishFailures, m.delivered, m.overflows, m.badPayloads, m.authFailures, m.forbidden, m.rateLimited, m.closes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func codeLabel(code websocket.StatusCode) string {
	return strconv.Itoa(int(code))
}
