package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig holds the Redis broker's settings. Zero values take the
// defaults noted.
type RedisConfig struct {
	// URL is a redis:// or rediss:// URL (TLS, ACL user and password).
	URL string
	// Prefix starts every key and channel name (default "hub:"). It must not
	// contain '{' or '}': a room's keys share the hash tag {Prefix room}.
	Prefix string
	// NodeID is the name the operator gave this node: two live nodes with
	// the same one are told apart and reported (the later is not ready).
	NodeID string
	// Origin is this process's unique id: its probe channel and, with
	// history off, the tag that tells its own messages apart (default
	// NodeID).
	Origin string
	// ProbeInterval is how often the node publishes a probe to itself
	// (default 1s).
	ProbeInterval time.Duration
	// ProbeTimeout is how long the subscription may stay silent, no probe
	// coming back, before the node counts it as lost (default 3s).
	ProbeTimeout time.Duration
	// Timeout bounds how long a publication may wait in the node's queue,
	// and then for Redis's answer (default 5s each).
	Timeout time.Duration
	// HistorySize is how many messages each room keeps in its stream (0:
	// history off); HistoryTTL how long a room's history lives after its
	// last publish (default 5m).
	HistorySize int
	HistoryTTL  time.Duration
	// MaxBatch bounds how many commands, or how many channels of a
	// subscription change, go out in one round trip (default 512).
	MaxBatch int
	// NoBatching sends one publication per round trip, for comparison.
	NoBatching bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Redis is the broker of a cluster: one Redis channel per room, subscribed
// only while this node has local members in the room; commands pipelined.
// With history on, each room also has a stream of its last HistorySize
// messages and a hash with its epoch and latest offset; one script appends
// and publishes a message in one atomic step, so the offset a subscriber
// sees is the one stored.
//
// Redis pub/sub is at-most-once. Redis makes every gap visible: a lost
// connection or a subscription that goes silent (caught by a probe the node
// publishes to itself) makes the broker not ready, and when a room's
// subscription is back it tells the Sink to Resync the room.
//
// A publication is sent at most once: go-redis never retries a command
// here, so after a Redis stall a message is not delivered twice or out of
// order. Its error says what is known: ErrUnavailable when it certainly did
// not reach Redis, ErrUncertain when it may have.
//
// All methods may be called concurrently. Subscribe and Unsubscribe record
// interest and never block; Run carries it out, and must be running for a
// subscription to go live or a command to be sent.
type Redis struct {
	cfg     RedisConfig
	log     *slog.Logger
	client  *redis.Client // commands: scripts, publishes, reads
	sub     *redis.Client // the pub/sub connection
	probeCh string
	leaseK  string
	metrics *redisMetrics

	pubQ  chan *op // publications, in order
	readQ chan *op // history reads
	kick  chan struct{}

	subErr   atomic.Pointer[error] // why the subscription is not proven live, or nil
	dupErr   atomic.Pointer[error] // another live node holds this node id, or nil
	stopSubs chan struct{}         // closed by StopSubscriptions
	stopOnce sync.Once
	subsDone chan struct{} // closed when the subscribe loop has ended

	// The publish queue's backlog (Backlog): nanoseconds.
	lastWait, lastWaitAt, execStart atomic.Int64

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
	// lost is set when the connection failed after the room's subscription
	// was live: its next confirmation is a resubscription, and the room may
	// have missed messages in between.
	lost bool
}

var errNotStarted = errors.New("redis: not connected yet")

// NewRedis returns a Redis broker for cfg. It does not connect: Run does, and
// keeps trying until Redis answers.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "hub:"
	}
	if strings.ContainsAny(cfg.Prefix, "{}") {
		return nil, errors.New("pubsub: prefix must not contain '{' or '}'")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("pubsub: empty node id")
	}
	if cfg.Origin == "" {
		cfg.Origin = cfg.NodeID
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 3 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.HistorySize < 0 {
		return nil, errors.New("pubsub: negative history size")
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = 5 * time.Minute
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
	m, err := newRedisMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Redis{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "pubsub", "broker", "redis"),
		client:   redis.NewClient(commandOptions(opts, cfg)),
		sub:      redis.NewClient(subscriberOptions(opts, cfg)),
		probeCh:  cfg.Prefix + "!probe:" + cfg.Origin, // '!' is never in a room name
		leaseK:   cfg.Prefix + "!node:" + cfg.NodeID,
		metrics:  m,
		pubQ:     make(chan *op, 4*cfg.MaxBatch),
		readQ:    make(chan *op, 4*cfg.MaxBatch),
		kick:     make(chan struct{}, 1),
		stopSubs: make(chan struct{}),
		subsDone: make(chan struct{}),
		rooms:    make(map[string]*roomSub),
		dirty:    make(map[string]struct{}),
	}
	r.setSubReady(errNotStarted)
	r.dupErr.Store(new(error))
	return r, nil
}

// commandOptions are the options of the command client. go-redis's zero
// values are not "off": each one that matters is set.
func commandOptions(base *redis.Options, cfg RedisConfig) *redis.Options {
	o := *base
	o.ClientName = "hubcluster:" + cfg.Origin
	// Never send a command twice: a retried PUBLISH or script after a stall
	// delivers a message twice and out of order (0 means 3 retries).
	o.MaxRetries = -1
	o.MinRetryBackoff, o.MaxRetryBackoff = -1, -1
	o.DialerRetries = 1 // 0 means 5 attempts per dial
	o.DialTimeout = 2 * time.Second
	o.ReadTimeout = 3 * time.Second
	o.WriteTimeout = 3 * time.Second
	// Deadlines of contexts bound the socket reads and writes (the default
	// ignores them and uses the read timeout alone).
	o.ContextTimeoutEnabled = true
	o.PoolSize = 8
	o.PoolTimeout = time.Second
	o.PipelinePoolSize = -1 // one pool, one dial breaker
	o.DisableIdentity = true
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return &o
}

// subscriberOptions are the options of the pub/sub client: the same, and a
// pool of its own so a pub/sub reconnect never waits behind commands.
func subscriberOptions(base *redis.Options, cfg RedisConfig) *redis.Options {
	o := commandOptions(base, cfg)
	o.ClientName = "hubcluster:" + cfg.Origin + ":sub"
	o.PoolSize = 2
	return o
}

// Ready reports why fan-out does not work now, or nil.
func (r *Redis) Ready() error {
	if err := *r.dupErr.Load(); err != nil {
		return err
	}
	return *r.subErr.Load()
}

func (r *Redis) setSubReady(err error) {
	r.subErr.Store(&err)
	if err == nil && *r.dupErr.Load() == nil {
		r.metrics.ready.Set(1)
	} else {
		r.metrics.ready.Set(0)
	}
}

// publishable reports why a publication would certainly not be delivered
// now, or nil. While the subscriptions are stopped on purpose (a drain),
// publishing still works.
func (r *Redis) publishable() error {
	err := *r.subErr.Load()
	if err == nil || r.stopping() {
		return nil
	}
	return err
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
			s.lost = false
		}
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Subscribed reports whether room's subscription is confirmed by Redis now.
func (r *Redis) Subscribed(room string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rooms[room]
	if s == nil || !s.wanted {
		return false
	}
	select {
	case <-s.live:
		return true
	default:
		return false
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

// Close closes the connections to Redis, giving this node's id back first.
// Call it after Run has returned.
func (r *Redis) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	releaseScript.Run(ctx, r.client, []string{r.leaseK}, r.cfg.Origin) // best effort
	return errors.Join(r.client.Close(), r.sub.Close())
}

// Run connects to Redis and carries messages until ctx ends: it sends
// commands, keeps the subscriptions in line with this node's interest,
// delivers what arrives to sink, and probes its own subscription. It returns
// nil when ctx ends.
func (r *Redis) Run(ctx context.Context, sink Sink) error {
	var wg sync.WaitGroup
	wg.Go(func() { r.commandLoop(ctx, r.pubQ, true) })
	wg.Go(func() { r.commandLoop(ctx, r.readQ, false) })
	r.subscribeLoop(ctx, sink)
	close(r.subsDone)
	wg.Wait()
	return nil
}

// keys of a room: they share the hash tag {prefix room}, so they live in one
// slot of a Redis Cluster.
func (r *Redis) channel(room string) string { return r.cfg.Prefix + "{" + room + "}" }
func (r *Redis) metaKey(room string) string { return r.cfg.Prefix + "{" + room + "}:m" }
func (r *Redis) streamKey(room string) string {
	return r.cfg.Prefix + "{" + room + "}:h"
}
func (r *Redis) idemKey(room, key string) string {
	return r.cfg.Prefix + "{" + room + "}:k:" + key
}

// roomOf returns the room of a channel name, or false.
func (r *Redis) roomOf(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, r.cfg.Prefix+"{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}")
}
