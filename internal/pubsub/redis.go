package pubsub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubcluster/hubcluster/internal/logthrottle"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig holds the Redis broker's settings. Zero values take the
// defaults noted.
//
// Exactly one of URL, Cluster and Sentinels names the Redis deployment.
type RedisConfig struct {
	// URL is a redis:// or rediss:// URL (TLS, ACL user and password) of a
	// standalone Redis.
	URL string
	// Cluster lists seed host:ports of a Redis Cluster. Every room lives on
	// the shard that owns its hash tag's slot, with sharded pub/sub.
	Cluster []string
	// Sentinels lists host:ports of the Redis Sentinels that watch the
	// primary named SentinelMaster.
	Sentinels      []string
	SentinelMaster string
	// Username, Password and TLS are the credentials and transport of the
	// Redis servers in Cluster and Sentinel mode (a URL carries its own).
	// Sentinels are asked without credentials, over TLS when it is on.
	Username string
	Password string
	TLS      bool
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
	// NodeTimeout is how old a node's heartbeat may be before the node
	// counts as dead and its presence entries are removed (default 5s).
	NodeTimeout time.Duration
	// NodeInfo describes this node for its heartbeat (connections, rooms,
	// readiness...); nil sends the node id only.
	NodeInfo   func() NodeInfo
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// mode is the Redis deployment a broker runs on.
type mode int

const (
	standalone mode = iota
	sentinel
	cluster
)

// Redis is the broker of a cluster: one Redis channel per room, subscribed
// only while this node has local members in the room; commands pipelined.
// With history on, each room also has a stream of its last HistorySize
// messages and a hash with its epoch and latest offset; one script appends
// and publishes a message in one atomic step, so the offset a subscriber
// sees is the one stored.
//
// On a Redis Cluster a room's channel and keys share one hash slot, so that
// script runs on the one shard that owns the room, and publishes with
// SPUBLISH: a message travels to that shard's subscribers only. The node
// keeps one pub/sub connection per primary, each with its own self-probe,
// and subscribes every room on the primary that owns its slot. When a slot
// moves or a primary fails over, Redis ends those subscriptions; the node
// follows the slot to its new owner, subscribes there, and tells the Sink to
// Resync the rooms. With Sentinel the one pub/sub connection follows the
// primary Sentinel names.
//
// Redis pub/sub is at-most-once. Redis makes every gap visible: a lost
// connection or a subscription that goes silent (caught by a probe the node
// publishes to itself) makes the broker not ready, and when a room's
// subscription is back it tells the Sink to Resync the room. After a
// failover (Cluster and Sentinel mode) a replica that had not received the
// last writes may have become the primary; before it reports a room to
// Resync, the broker checks that the room's history still holds the last
// message this node saw, and starts a new epoch when it does not, so the
// offsets handed out again are never taken for ones already delivered.
//
// A publication is sent at most once: go-redis never retries a command
// here, so after a Redis stall a message is not delivered twice or out of
// order. Its error says what is known: ErrUnavailable when it certainly did
// not reach Redis (or Redis refused it: a redirect that could not be
// followed, a slot in migration), ErrUncertain when it may have.
//
// All methods may be called concurrently. Subscribe and Unsubscribe record
// interest and never block; Run carries it out, and must be running for a
// subscription to go live or a command to be sent.
type Redis struct {
	cfg     RedisConfig
	mode    mode
	log     *slog.Logger
	client  redis.UniversalClient // commands: scripts, publishes, reads
	cluster *redis.ClusterClient  // client, in cluster mode
	subOpts *redis.Options        // cluster mode: the options of each primary's pub/sub client, without Addr
	single  *shard                // standalone and Sentinel mode: the one pub/sub connection
	leaseK  string
	metrics *redisMetrics
	fencing bool // check the history after a failover (Cluster, Sentinel; history on)

	pubQ  chan *op // publications, in order
	readQ chan *op // history reads and fences
	kick  chan struct{}

	dupErr     atomic.Pointer[error] // another live node holds this node id, or nil
	clusterErr atomic.Pointer[error] // cluster mode: why the slot map is not known, or nil
	routes     atomic.Pointer[routes]
	stopSubs   chan struct{} // closed by StopSubscriptions
	stopOnce   sync.Once
	subsDone   chan struct{} // closed when the subscribe loop has ended

	// The publish queue's backlog (Backlog): nanoseconds.
	lastWait, lastWaitAt, execStart atomic.Int64

	// Cluster mode: what shard sessions tell the cluster loop.
	reload chan struct{}
	moved  chan movedSlot

	mu    sync.Mutex // guards rooms, dirty, and the shards' dirty, stale, unsubs and count
	rooms map[string]*roomSub
	dirty map[string]struct{}

	pres               redisPresence
	view               *clusterView
	heartbeatFailedLog *logthrottle.Throttle

	fenceMu   sync.Mutex
	fenceQ    []string // rooms to check, then Resync
	fenceKick chan struct{}
}

// roomSub is this node's interest in one room, guarded by Redis.mu.
type roomSub struct {
	wanted bool
	slot   uint16
	// target is the shard that serves the room: the one shard, or in cluster
	// mode the primary that owns its slot (nil while that is not known).
	target  *shard
	sent    bool          // a SUBSCRIBE for it went to target's connection and no UNSUBSCRIBE since
	pending int           // SUBSCRIBE commands not yet confirmed
	live    chan struct{} // closed once the subscription is confirmed
	// lost is set when the connection failed after the room's subscription
	// was live: its next confirmation is a resubscription, and the room may
	// have missed messages in between.
	lost bool
	seen seen // the room's latest message this node knows of (fencing only)
}

// seen is a room's latest message known to this node: its place, and its
// data when known.
type seen struct {
	epoch string
	off   uint64
	data  []byte
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
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 5 * time.Second
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 512
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Redis{
		cfg:       cfg,
		leaseK:    cfg.Prefix + "!node:" + cfg.NodeID,
		pubQ:      make(chan *op, 4*cfg.MaxBatch),
		readQ:     make(chan *op, 4*cfg.MaxBatch),
		kick:      make(chan struct{}, 1),
		stopSubs:  make(chan struct{}),
		subsDone:  make(chan struct{}),
		reload:    make(chan struct{}, 1),
		moved:     make(chan movedSlot, 64),
		rooms:     make(map[string]*roomSub),
		dirty:     make(map[string]struct{}),
		fenceKick: make(chan struct{}, 1),
	}
	r.dupErr.Store(new(error))
	r.clusterErr.Store(new(error))
	var modes []string
	if cfg.URL != "" {
		modes = append(modes, "url")
	}
	if len(cfg.Cluster) > 0 {
		modes, r.mode = append(modes, "cluster"), cluster
	}
	if len(cfg.Sentinels) > 0 || cfg.SentinelMaster != "" {
		modes, r.mode = append(modes, "sentinels"), sentinel
	}
	if len(modes) != 1 {
		return nil, fmt.Errorf("pubsub: want one Redis deployment (a URL, cluster seeds, or sentinels), got %d", len(modes))
	}
	if r.mode == sentinel && (len(cfg.Sentinels) == 0 || cfg.SentinelMaster == "") {
		return nil, errors.New("pubsub: sentinel mode needs the sentinels and the primary's name")
	}
	m, err := newRedisMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r.metrics = m
	if err := r.pres.init(cfg.Registerer); err != nil {
		return nil, err
	}
	if r.view, err = newClusterView(cfg.NodeInfo, cfg.Registerer); err != nil {
		return nil, err
	}
	r.fencing = r.mode != standalone && cfg.HistorySize > 0
	switch r.mode {
	case standalone:
		opts, err := redis.ParseURL(cfg.URL)
		if err != nil {
			// ParseURL's errors do not quote the URL, so no password leaks here.
			return nil, fmt.Errorf("pubsub: redis url: %w", err)
		}
		r.client = redis.NewClient(commandOptions(opts, cfg))
		r.single = r.newShard("", redis.NewClient(subscriberOptions(opts, cfg)))
		r.single.dirty, r.single.kick = r.dirty, r.kick // the one shard is the whole interest
	case sentinel:
		r.client = redis.NewFailoverClient(failoverOptions(cfg, false))
		r.single = r.newShard(cfg.SentinelMaster, redis.NewFailoverClient(failoverOptions(cfg, true)))
		r.single.dirty, r.single.kick = r.dirty, r.kick
	case cluster:
		r.cluster = redis.NewClusterClient(clusterOptions(cfg))
		r.client = r.cluster
		r.subOpts = subscriberOptions(nodeOptions(cfg), cfg)
		r.setClusterErr(errors.New("redis cluster: slot map not read yet"))
	}
	r.log = cfg.Logger.With("component", "pubsub", "broker", "redis")
	r.heartbeatFailedLog = logthrottle.New(r.log, slog.LevelWarn, "presence: heartbeat not written", 10*time.Second)
	if r.single != nil {
		r.single.probeCh = cfg.Prefix + "!probe:" + cfg.Origin // '!' is never in a room name
		r.single.setReady(errNotStarted)
	}
	r.updateReady()
	return r, nil
}

// The options of every client. go-redis's zero values are not "off": each
// one that matters is set, in each of the three option structs.

// commandOptions are the options of the command client.
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

// nodeOptions are the connection settings of one Redis server in Cluster
// and Sentinel mode.
func nodeOptions(cfg RedisConfig) *redis.Options {
	o := &redis.Options{Username: cfg.Username, Password: cfg.Password}
	if cfg.TLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12} // the server name comes from each address
	}
	return o
}

// clusterOptions are the options of the command client of a Redis Cluster:
// commandOptions', and redirects followed. A MOVED or ASK reply means the
// command did not run, so sending it to the slot's owner is safe; a command
// that may have run is never sent again, because every command this broker
// sends through it is marked NoRetry (see once).
func clusterOptions(cfg RedisConfig) *redis.ClusterOptions {
	o := commandOptions(nodeOptions(cfg), cfg)
	return &redis.ClusterOptions{
		Addrs:                    slices.Clone(cfg.Cluster),
		ClientName:               o.ClientName,
		Username:                 o.Username,
		Password:                 o.Password,
		TLSConfig:                o.TLSConfig,
		MaxRedirects:             3, // 0 means 3, -1 none
		MaxRetries:               o.MaxRetries,
		MinRetryBackoff:          o.MinRetryBackoff,
		MaxRetryBackoff:          o.MaxRetryBackoff,
		DialerRetries:            o.DialerRetries,
		DialTimeout:              o.DialTimeout,
		ReadTimeout:              o.ReadTimeout,
		WriteTimeout:             o.WriteTimeout,
		ContextTimeoutEnabled:    o.ContextTimeoutEnabled,
		PoolSize:                 o.PoolSize, // per node
		PoolTimeout:              o.PoolTimeout,
		PipelinePoolSize:         o.PipelinePoolSize,
		DisableIdentity:          o.DisableIdentity,
		MaintNotificationsConfig: o.MaintNotificationsConfig,
		// A node a command failed on is avoided for this long; the cluster
		// loop learns of failovers from the servers themselves.
		FailingTimeoutSeconds: 2,
		// The cluster loop reloads the slot map on every sign of a change;
		// this only bounds how stale go-redis's own copy may get.
		ClusterStateReloadInterval: 10 * time.Second,
	}
}

// failoverOptions are the options of a client of the primary Sentinel
// names: commandOptions', or subscriberOptions' with sub.
func failoverOptions(cfg RedisConfig, sub bool) *redis.FailoverOptions {
	o := commandOptions(nodeOptions(cfg), cfg)
	if sub {
		o = subscriberOptions(nodeOptions(cfg), cfg)
	}
	return &redis.FailoverOptions{
		MasterName:            cfg.SentinelMaster,
		SentinelAddrs:         slices.Clone(cfg.Sentinels),
		ClientName:            o.ClientName,
		Username:              o.Username,
		Password:              o.Password,
		TLSConfig:             o.TLSConfig,
		MaxRetries:            o.MaxRetries,
		MinRetryBackoff:       o.MinRetryBackoff,
		MaxRetryBackoff:       o.MaxRetryBackoff,
		DialerRetries:         o.DialerRetries,
		DialTimeout:           o.DialTimeout,
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		PoolSize:              o.PoolSize,
		PoolTimeout:           o.PoolTimeout,
		PipelinePoolSize:      o.PipelinePoolSize,
		DisableIdentity:       o.DisableIdentity,
	}
}

// Ready reports why fan-out does not work now, or nil. In cluster mode the
// reason names the shard whose subscription is not proven live.
func (r *Redis) Ready() error {
	if err := *r.dupErr.Load(); err != nil {
		return err
	}
	if err := r.presenceReady(); err != nil {
		return err
	}
	if r.single != nil {
		return r.single.ready()
	}
	if err := *r.clusterErr.Load(); err != nil {
		return err
	}
	rt := r.routes.Load()
	if rt == nil {
		return errNotStarted
	}
	for _, sh := range rt.shards {
		if err := sh.ready(); err != nil {
			return fmt.Errorf("redis shard %s (slots %s): %w", sh.name, rt.slots[sh], err)
		}
	}
	if rt.uncovered != "" {
		return fmt.Errorf("redis cluster: no primary serves slots %s", rt.uncovered)
	}
	return nil
}

func (r *Redis) setClusterErr(err error) {
	r.clusterErr.Store(&err)
	r.updateReady()
}

// updateReady sets the readiness gauge from Ready.
func (r *Redis) updateReady() {
	if r.Ready() == nil {
		r.metrics.ready.Set(1)
	} else {
		r.metrics.ready.Set(0)
	}
}

// publishable reports why a publication to room would certainly not be
// delivered now, or nil. While the subscriptions are stopped on purpose (a
// drain), publishing still works.
func (r *Redis) publishable(room string) (*shard, error) {
	sh := r.shardOf(room)
	if r.stopping() {
		return sh, nil
	}
	if sh == nil {
		if err := *r.clusterErr.Load(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("redis cluster: no primary serves the slot of room %q", room)
	}
	return sh, sh.ready()
}

// shardOf returns the shard that serves room, or nil when that is not known.
func (r *Redis) shardOf(room string) *shard {
	if r.single != nil {
		return r.single
	}
	if rt := r.routes.Load(); rt != nil {
		return rt.bySlot[slot(r.channel(room))]
	}
	return nil
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
		s = &roomSub{live: make(chan struct{}), target: r.single}
		if r.single == nil {
			s.slot = slot(r.channel(room))
		}
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
	if _, ok := r.rooms[controlRoom]; ok {
		return len(r.rooms) - 1
	}
	return len(r.rooms)
}

// StopSubscriptions drops every subscription of this node at once, by closing
// its pub/sub connections (Redis forgets a connection's subscriptions when it
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
	err := r.client.Close()
	if r.single != nil {
		err = errors.Join(err, r.single.sub.Close())
	}
	return err
}

// Run connects to Redis and carries messages until ctx ends: it sends
// commands, keeps the subscriptions in line with this node's interest,
// delivers what arrives to sink, and probes its own subscriptions. It returns
// nil when ctx ends.
func (r *Redis) Run(ctx context.Context, sink Sink) error {
	var wg sync.WaitGroup
	r.want(controlRoom, true) // operators' commands, from any node
	wg.Go(func() { r.commandLoop(ctx, r.pubQ, true) })
	wg.Go(func() { r.presenceLoop(ctx) })
	wg.Go(func() { r.heartbeatLoop(ctx) })
	wg.Go(func() { r.commandLoop(ctx, r.readQ, false) })
	if r.fencing {
		wg.Go(func() { r.fenceLoop(ctx, sink) })
	}
	if r.mode == cluster {
		r.clusterLoop(ctx, sink)
	} else {
		r.subscribeLoop(ctx, sink, r.single)
	}
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
