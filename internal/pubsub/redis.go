package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// RedisConfig holds the Redis broker's settings. Zero values take the defaults
// noted.
type RedisConfig struct {
	// URL is a redis:// or rediss:// URL (TLS, ACL user and password).
	URL string
	// Prefix starts every channel name: one channel per room, Prefix+room.
	Prefix string
	// NodeID names this node; its self-probe channel is private to it.
	NodeID string
	// ProbeInterval is how often the node publishes a probe to itself
	// (default 1s).
	ProbeInterval time.Duration
	// ProbeTimeout is how long the subscription may stay silent, no probe
	// coming back, before the node counts it as lost (default 3s).
	ProbeTimeout time.Duration
	// MaxBatch bounds how many publishes, or how many channels of a
	// subscription change, go out in one round trip (default 512).
	MaxBatch int
	// Batching turns publish pipelining on (the default); off sends one
	// PUBLISH per round trip, for comparison.
	NoBatching bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Redis is the broker of a cluster: one Redis channel per room, subscribed
// only while this node has local members in the room; publishes pipelined.
//
// Redis pub/sub is at-most-once. Redis makes every gap visible instead of
// losing messages quietly: a lost connection or a subscription that goes
// silent (caught by a probe the node publishes to itself) makes the broker
// not ready, and when the subscription is back it reports a Gap for every room
// to the Sink.
//
// All methods may be called concurrently. Subscribe and Unsubscribe record
// interest and never block; Run carries it out, and must be running for a
// subscription to go live or a publish to be sent.
type Redis struct {
	cfg      RedisConfig
	log      *slog.Logger
	client   *redis.Client
	probeCh  string
	metrics  *redisMetrics
	publishQ chan *publishReq
	kick     chan struct{} // interest changed; capacity 1
	ready    atomic.Pointer[error]
	stopSubs chan struct{} // closed by StopSubscriptions
	stopOnce sync.Once
	subsDone chan struct{} // closed when the subscribe loop has ended

	mu    sync.Mutex // guards rooms and dirty
	rooms map[string]*roomSub
	dirty map[string]struct{}
}

// roomSub is this node's interest in one room, guarded by Redis.mu.
type roomSub struct {
	wanted  bool
	sent    bool          // a SUBSCRIBE for it went to Redis and no UNSUBSCRIBE since
	pending int           // SUBSCRIBE commands not yet confirmed
	live    chan struct{} // closed once the subscription is confirmed
}

var errNotStarted = errors.New("redis: not connected yet")

// NewRedis returns a Redis broker for cfg. It does not connect: Run does, and
// keeps trying until Redis answers.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "hub:"
	}
	if cfg.NodeID == "" {
		return nil, errors.New("pubsub: empty node id")
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 3 * time.Second
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 512
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		// ParseURL's errors do not quote the URL, so no password leaks here.
		return nil, fmt.Errorf("pubsub: redis url: %w", err)
	}
	opts.DialTimeout = 2 * time.Second
	opts.ReadTimeout = 3 * time.Second
	opts.WriteTimeout = 3 * time.Second
	opts.MaxRetries = 0 // a publish that failed is reported, not replayed out of order
	opts.ClientName = "hubcluster:" + cfg.NodeID
	m, err := newRedisMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Redis{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "pubsub", "broker", "redis"),
		client:   redis.NewClient(opts),
		probeCh:  cfg.Prefix + "!probe:" + cfg.NodeID, // '!' is never in a room name
		metrics:  m,
		publishQ: make(chan *publishReq, 4*cfg.MaxBatch),
		kick:     make(chan struct{}, 1),
		stopSubs: make(chan struct{}),
		subsDone: make(chan struct{}),
		rooms:    make(map[string]*roomSub),
		dirty:    make(map[string]struct{}),
	}
	r.setReady(errNotStarted)
	return r, nil
}

// Ready reports why fan-out does not work now, or nil.
func (r *Redis) Ready() error { return *r.ready.Load() }

func (r *Redis) setReady(err error) {
	r.ready.Store(&err)
	if err == nil {
		r.metrics.ready.Set(1)
	} else {
		r.metrics.ready.Set(0)
	}
}

// Subscribe records this node's interest in room. It never blocks.
func (r *Redis) Subscribe(room string) { r.want(room, true) }

// Unsubscribe drops this node's interest in room. It never blocks.
func (r *Redis) Unsubscribe(room string) { r.want(room, false) }

func (r *Redis) want(room string, wanted bool) {
	r.mu.Lock()
	s := r.rooms[room]
	if s == nil {
		if !wanted {
			r.mu.Unlock()
			return
		}
		s = &roomSub{live: make(chan struct{})}
		r.rooms[room] = s
	}
	if s.wanted != wanted {
		s.wanted = wanted
		r.dirty[room] = struct{}{}
		if wanted && !s.sent {
			// A new SUBSCRIBE goes out: wait for its own confirmation.
			select {
			case <-s.live:
				s.live = make(chan struct{})
			default:
			}
		}
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// WaitSubscribed blocks until room's subscription is confirmed by Redis, or ctx
// ends.
func (r *Redis) WaitSubscribed(ctx context.Context, room string) error {
	r.mu.Lock()
	s := r.rooms[room]
	r.mu.Unlock()
	if s == nil || !s.wanted {
		return fmt.Errorf("pubsub: %q: not subscribed", room)
	}
	select {
	case <-s.live:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pubsub: subscribe %q: %w", room, ctx.Err())
	}
}

// Subscriptions returns how many rooms this node wants subscribed.
func (r *Redis) Subscriptions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rooms)
}

type publishReq struct {
	channel string
	payload []byte
	done    chan error
}

var publishReqs = sync.Pool{New: func() any { return &publishReq{done: make(chan error, 1)} }}

// Publish sends payload to room's channel and returns once Redis took it, or
// with an error once ctx ends or Redis failed. Publishes are pipelined with
// those of other callers; one caller's publishes keep their order.
func (r *Redis) Publish(ctx context.Context, room string, payload []byte) error {
	req := publishReqs.Get().(*publishReq)
	req.channel = r.cfg.Prefix + room
	req.payload = payload
	select {
	case r.publishQ <- req:
	case <-ctx.Done():
		publishReqs.Put(req)
		return fmt.Errorf("pubsub: publish %q: %w", room, ctx.Err())
	}
	select {
	case err := <-req.done:
		req.payload = nil
		publishReqs.Put(req) // only once its answer is read: no stale answer for the next user
		if err != nil {
			return fmt.Errorf("pubsub: publish %q: %w", room, err)
		}
		return nil
	case <-ctx.Done():
		// The publisher loop still answers into req.done; req is not reused.
		return fmt.Errorf("pubsub: publish %q: %w", room, ctx.Err())
	}
}

// StopSubscriptions drops every subscription of this node at once, by closing
// its pub/sub connection (Redis forgets a connection's subscriptions when it
// closes, whether or not Redis answers), so the node stops taking cluster
// traffic. Publishing still works. It returns when the subscription loop has
// ended, or ctx has.
func (r *Redis) StopSubscriptions(ctx context.Context) error {
	r.stopOnce.Do(func() { close(r.stopSubs) })
	select {
	case <-r.subsDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pubsub: stop subscriptions: %w", ctx.Err())
	}
}

// Close closes the connections to Redis. Call it after Run has returned.
func (r *Redis) Close() error {
	return r.client.Close()
}

// Run connects to Redis and carries messages until ctx ends: it publishes,
// keeps the subscriptions in line with this node's interest, delivers what
// arrives to sink, and probes its own subscription. It returns nil when ctx
// ends.
func (r *Redis) Run(ctx context.Context, sink Sink) error {
	var wg sync.WaitGroup
	wg.Go(func() { r.publishLoop(ctx) })
	r.subscribeLoop(ctx, sink)
	close(r.subsDone)
	wg.Wait()
	return nil
}

// publishLoop sends queued publishes, as many per round trip as are waiting.
func (r *Redis) publishLoop(ctx context.Context) {
	batch := make([]*publishReq, 0, r.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			r.failQueued(ctx.Err())
			return
		case req := <-r.publishQ:
			batch = append(batch, req)
		}
	fill:
		for !r.cfg.NoBatching && len(batch) < cap(batch) {
			select {
			case req := <-r.publishQ:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		r.publishBatch(ctx, batch)
	}
}

func (r *Redis) publishBatch(ctx context.Context, batch []*publishReq) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r.metrics.batchSize.Observe(float64(len(batch)))
	if len(batch) == 1 {
		req := batch[0]
		req.done <- r.client.Publish(ctx, req.channel, req.payload).Err()
		return
	}
	pipe := r.client.Pipeline()
	cmds := make([]*redis.IntCmd, len(batch))
	for i, req := range batch {
		cmds[i] = pipe.Publish(ctx, req.channel, req.payload)
	}
	_, err := pipe.Exec(ctx)
	for i, req := range batch {
		if e := cmds[i].Err(); e != nil {
			req.done <- e
		} else {
			req.done <- err
		}
	}
}

// failQueued answers every publish still queued when the loop stops.
func (r *Redis) failQueued(err error) {
	for {
		select {
		case req := <-r.publishQ:
			req.done <- err
		default:
			return
		}
	}
}
