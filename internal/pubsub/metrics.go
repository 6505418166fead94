package pubsub

import "github.com/prometheus/client_golang/prometheus"

type redisMetrics struct {
	ready            prometheus.Gauge
	connectionLosses prometheus.Counter
	silentResets     prometheus.Counter
	gaps             prometheus.Counter
	probeLatency     prometheus.Histogram
	batchSize        prometheus.Histogram
	received         prometheus.Counter
	dropped          prometheus.Counter
	subscriptions    prometheus.Gauge
}

func newRedisMetrics(reg prometheus.Registerer) (*redisMetrics, error) {
	m := &redisMetrics{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_redis_ready", Help: "1 while the Redis subscription is proven live by the self-probe.",
		}),
		connectionLosses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_reconnects_total", Help: "Times the Redis subscription connection was lost (go-redis reconnects and resubscribes).",
		}),
		silentResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_silent_resets_total", Help: "Subscriptions recreated because the self-probe stopped coming back.",
		}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_gaps_total", Help: "Fan-out gaps closed and reported to room members.",
		}),
		probeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hub_redis_probe_seconds", Help: "Round trip of the self-probe through Redis pub/sub.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hub_redis_publish_batch_size", Help: "Publishes sent to Redis per round trip.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_messages_in_total", Help: "Room messages received from Redis.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hub_redis_dropped_total", Help: "Messages from Redis dropped (not on a room channel of this prefix).",
		}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_redis_subscriptions", Help: "Room channels this node is subscribed to.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.ready, m.connectionLosses, m.silentResets, m.gaps,
		m.probeLatency, m.batchSize, m.received, m.dropped, m.subscriptions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
