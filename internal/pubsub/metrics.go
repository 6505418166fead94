package pubsub

import "github.com/prometheus/client_golang/prometheus"

type redisMetrics struct {
	ready            prometheus.Gauge
	duplicateID      prometheus.Gauge
	connectionLosses prometheus.Counter
	silentResets     prometheus.Counter
	gaps             prometheus.Counter
	probeLatency     prometheus.Histogram
	batchSize        prometheus.Histogram
	publishes        *prometheus.CounterVec
	historyReads     prometheus.Counter
	historyEntries   prometheus.Counter
	received         prometheus.Counter
	dropped          prometheus.Counter
	subscriptions    prometheus.Gauge
}

func newRedisMetrics(reg prometheus.Registerer) (*redisMetrics, error) {
	m := &redisMetrics{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_redis_ready", Help: "1 while the Redis subscription is proven live by the self-probe and the node id is this node's alone.",
		}),
		duplicateID: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_redis_duplicate_node_id", Help: "1 while another live node uses this node's HUB_NODE_ID.",
		}),
		connectionLosses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_reconnects_total", Help: "Times the Redis subscription connection broke (restart, kill, output buffer limit) and go-redis reconnected it.",
		}),
		silentResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_silent_resets_total", Help: "Subscriptions recreated because the self-probe stopped coming back on a connection that reported no error.",
		}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_gaps_total", Help: "Room subscriptions made again after the subscription was lost: each a range the room may have missed (read back from history when it is on).",
		}),
		probeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hub_redis_probe_seconds", Help: "Round trip of the self-probe through Redis pub/sub.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hub_redis_publish_batch_size", Help: "Publishes sent to Redis per round trip.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_redis_publishes_total", Help: "Publications by outcome: ok, unavailable (certainly not delivered), timeout (may be delivered).",
		}, []string{"outcome"}),
		historyReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_history_reads_total", Help: "History reads (positions and ranges) sent to Redis.",
		}),
		historyEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_history_entries_total", Help: "Stream entries read back from Redis.",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_messages_in_total", Help: "Room messages received from Redis.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_dropped_total", Help: "Messages from Redis dropped (not on a room channel of this prefix, or not in the node format).",
		}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_redis_subscriptions", Help: "Room channels this node is subscribed to.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.ready, m.duplicateID, m.connectionLosses, m.silentResets, m.gaps,
		m.probeLatency, m.batchSize, m.publishes, m.historyReads, m.historyEntries, m.received, m.dropped, m.subscriptions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
