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
	fences           prometheus.Counter

	// per shard (cluster mode: one per primary; Sentinel: the primary's name)
	shardReady         *prometheus.GaugeVec
	shardSubscriptions *prometheus.GaugeVec
	shardPublishes     *prometheus.CounterVec
	shardGaps          *prometheus.CounterVec
	shardReconnects    *prometheus.CounterVec
}

// shardMetrics are one shard's series.
type shardMetrics struct {
	ready, subscriptions             prometheus.Gauge
	published, unavailable, timedOut prometheus.Counter
	gaps, reconnects                 prometheus.Counter
}

func (m *shardMetrics) publish(outcome string) {
	switch outcome {
	case "ok":
		m.published.Inc()
	case "timeout":
		m.timedOut.Inc()
	default:
		m.unavailable.Inc()
	}
}

// forShard returns the series of the shard called name; a standalone
// Redis (name empty) gets series that are not exported.
func (m *redisMetrics) forShard(name string) *shardMetrics {
	if name == "" {
		g := func() prometheus.Gauge { return prometheus.NewGauge(prometheus.GaugeOpts{Name: "unexported"}) }
		c := func() prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: "unexported"}) }
		return &shardMetrics{g(), g(), c(), c(), c(), c(), c()}
	}
	return &shardMetrics{
		ready:         m.shardReady.WithLabelValues(name),
		subscriptions: m.shardSubscriptions.WithLabelValues(name),
		published:     m.shardPublishes.WithLabelValues(name, "ok"),
		unavailable:   m.shardPublishes.WithLabelValues(name, "unavailable"),
		timedOut:      m.shardPublishes.WithLabelValues(name, "timeout"),
		gaps:          m.shardGaps.WithLabelValues(name),
		reconnects:    m.shardReconnects.WithLabelValues(name),
	}
}

// dropShard removes the series of a shard that is gone.
func (m *redisMetrics) dropShard(name string) {
	l := prometheus.Labels{"shard": name}
	m.shardReady.DeletePartialMatch(l)
	m.shardSubscriptions.DeletePartialMatch(l)
	m.shardPublishes.DeletePartialMatch(l)
	m.shardGaps.DeletePartialMatch(l)
	m.shardReconnects.DeletePartialMatch(l)
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
		fences: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_history_fences_total", Help: "Rooms whose history, after a failover, no longer held the last message this node saw: a new epoch was started, and members told gap.",
		}),
		shardReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hub_redis_shard_ready", Help: "1 while this shard's subscription connection is proven live by its self-probe (Redis Cluster: one shard per primary, by address; Sentinel: the primary's name).",
		}, []string{"shard"}),
		shardSubscriptions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hub_redis_shard_subscriptions", Help: "Room channels this node is subscribed to on the shard.",
		}, []string{"shard"}),
		shardPublishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_redis_shard_publishes_total", Help: "Publications to rooms the shard serves, by outcome: ok, unavailable, timeout.",
		}, []string{"shard", "outcome"}),
		shardGaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_redis_shard_gaps_total", Help: "Room subscriptions made again on the shard after they were lost (a reconnect, a slot that moved, a failover).",
		}, []string{"shard"}),
		shardReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_redis_shard_reconnects_total", Help: "Times the shard's subscription connection broke.",
		}, []string{"shard"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.ready, m.duplicateID, m.connectionLosses, m.silentResets, m.gaps,
		m.probeLatency, m.batchSize, m.publishes, m.historyReads, m.historyEntries, m.received, m.dropped, m.subscriptions,
		m.fences, m.shardReady, m.shardSubscriptions, m.shardPublishes, m.shardGaps, m.shardReconnects} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
