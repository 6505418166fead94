// Command node runs one hubcluster node: a WebSocket hub that shares its rooms
// with the other nodes through Redis, or runs alone on an in-memory broker.
// Every setting comes from HUB_ environment variables (see the README).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/config"
	"github.com/hubcluster/hubcluster/internal/demo"
	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/lifecycle"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	_ "golang.org/x/crypto/x509roots/fallback" // root certificates for rediss:// in an image without any
)

func main() {
	if os.Getenv("GOGC") == "" {
		// Half the heap headroom of Go's default: an idle connection's
		// memory is mostly heap, and a hub holds many (README, "Memory").
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Environ(), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, environ []string, logOut io.Writer) error {
	cfg, err := config.Load(environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg, logOut)
	if unknown := config.Unknown(environ); len(unknown) > 0 {
		log.Warn("unknown HUB_ variables are ignored: a typo?", "variables", unknown)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The origin tells this process apart from every other, even one that
	// was given the same HUB_NODE_ID by mistake.
	origin := cfg.NodeID + "-" + randomHex(4)
	// The heartbeat describes the node; what it reads is made below.
	var (
		h       *hub.Hub
		srv     *server.Server
		started = time.Now().UTC().Truncate(time.Second)
		address = advertisedAddr(cfg.Addr)
	)
	info := func() pubsub.NodeInfo {
		n := pubsub.NodeInfo{ID: cfg.NodeID, Address: address, Version: version, Started: started}
		if h != nil && srv != nil {
			n.Connections, n.Rooms, n.Ready = h.Clients(), h.Rooms(), srv.Ready() == nil
		}
		return n
	}
	broker, err := newBroker(cfg, origin, info, log, reg)
	if err != nil {
		return err
	}
	verifier, err := newVerifier(cfg, log)
	if err != nil {
		return err
	}
	hcfg := hubConfig(cfg, origin, log, reg)
	if verifier != nil {
		hcfg.Authenticator = verifier // a nil *auth.Verifier must not become a non-nil interface
	}
	hcfg.Presence, hcfg.PresenceLimit = broker, cfg.PresenceLimit
	hb, err := hub.New(hcfg, broker)
	if err != nil {
		return err
	}
	s := server.New(serverConfig(cfg, broker.Ready, log, reg), hb)
	h, srv = hb, s

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on HUB_ADDR %q: %w", cfg.Addr, err)
	}
	brokerName := "memory"
	switch cfg.RedisMode() {
	case config.RedisStandalone:
		brokerName = "redis " + cfg.RedactedRedisURL()
	case config.RedisCluster:
		brokerName = "redis cluster " + strings.Join(cfg.RedisCluster, ",")
	case config.RedisSentinel:
		brokerName = "redis sentinel " + cfg.RedisMaster + "@" + strings.Join(cfg.RedisSentinels, ",")
	}
	log.Info("node started", "addr", ln.Addr().String(), "node_id", cfg.NodeID, "origin", origin, "broker", brokerName,
		"history_size", cfg.HistorySize)

	return serve(ctx, cfg, log, reg, ln, srv, h, broker)
}

// serverConfig is the HTTP server's share of cfg.
func serverConfig(cfg config.Config, ready func() error, log *slog.Logger, reg *prometheus.Registry) server.Config {
	trusted, _ := cfg.TrustedProxies() // validated by config.Load
	var demoPage http.Handler
	if cfg.Demo {
		demoPage = demo.Handler(cfg.NodeID)
	}
	return server.Config{
		Demo:                demoPage,
		APIKey:              cfg.APIKey,
		AllowedOrigins:      cfg.AllowedOrigins,
		MaxMessageBytes:     cfg.MaxMessageBytes,
		Ready:               ready,
		Gatherer:            reg,
		Logger:              log,
		MaxConnections:      cfg.MaxConns,
		MaxConnectionsPerIP: cfg.MaxConnsPerIP,
		TrustedProxies:      trusted,
		Registerer:          reg,
		ReadTimeout:         cfg.HTTPReadTimeout,
		// The slowest handler is a publish that waits HUB_BROKER_TIMEOUT
		// for the broker; its answer must still get out.
		WriteTimeout:            cfg.HTTPReadTimeout + cfg.BrokerTimeout + 5*time.Second,
		MaxHTTPConnections:      cfg.MaxHTTPConns,
		MaxHTTPConnectionsPerIP: cfg.MaxHTTPConnsPerIP,
	}
}

// hubConfig is the hub's share of cfg.
func hubConfig(cfg config.Config, origin string, log *slog.Logger, reg prometheus.Registerer) hub.Config {
	ping := cfg.PingInterval
	if ping == 0 {
		ping = -1 // HUB_PING_INTERVAL=0 is off; the hub takes 0 as its default
	}
	coalesce, _ := cfg.WriteCoalesce() // validated by config.Load
	return hub.Config{
		NodeID:            cfg.NodeID,
		Origin:            origin,
		SendQueue:         cfg.SendQueue,
		SlowTimeout:       cfg.SlowTimeout,
		SendQueueBytes:    cfg.SendQueueBytes,
		HistorySize:       cfg.HistorySize,
		BrokerTimeout:     cfg.BrokerTimeout,
		MaxMessageBytes:   cfg.MaxMessageBytes,
		WriteTimeout:      cfg.WriteTimeout,
		WriteCoalesce:     coalesce,
		PingInterval:      ping,
		AuthTimeout:       cfg.AuthTimeout,
		ClientRate:        cfg.ClientRate,
		ClientBurst:       cfg.ClientBurst,
		MaxRoomsPerClient: cfg.MaxRooms,
		Logger:            log,
		Registerer:        reg,
	}
}

func newBroker(cfg config.Config, origin string, info func() pubsub.NodeInfo, log *slog.Logger, reg prometheus.Registerer) (pubsub.Broker, error) {
	mode := cfg.RedisMode()
	if mode == config.RedisNone {
		return pubsub.NewMemory(pubsub.MemoryConfig{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL,
			NodeInfo: info, Registerer: reg}), nil
	}
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})
	rc := pubsub.RedisConfig{
		Prefix:        cfg.RedisPrefix,
		NodeID:        cfg.NodeID,
		Origin:        origin,
		ProbeInterval: cfg.ProbeInterval,
		ProbeTimeout:  cfg.ProbeTimeout,
		Timeout:       cfg.BrokerTimeout,
		HistorySize:   cfg.HistorySize,
		HistoryTTL:    cfg.HistoryTTL,
		NodeTimeout:   cfg.NodeTimeout,
		NodeInfo:      info,
		Logger:        log,
		Registerer:    reg,
	}
	setting := "HUB_REDIS_URL"
	switch mode {
	case config.RedisStandalone:
		rc.URL = cfg.RedisURL
	case config.RedisCluster:
		rc.Cluster, setting = cfg.RedisCluster, "HUB_REDIS_CLUSTER"
	case config.RedisSentinel:
		rc.Sentinels, rc.SentinelMaster, setting = cfg.RedisSentinels, cfg.RedisMaster, "HUB_REDIS_SENTINELS"
	}
	if mode != config.RedisStandalone {
		rc.Username, rc.Password, rc.TLS = cfg.RedisUsername, cfg.RedisPassword, cfg.RedisTLS
	}
	b, err := pubsub.NewRedis(rc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	return b, nil
}

// version is the node's version, in its heartbeat (set with -ldflags
// "-X main.version=...").
var version = "1.1.0"

// advertisedAddr is the address other nodes and operators see for a node
// listening on addr: the hostname stands in for an empty or any-address host.
func advertisedAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		if name, err := os.Hostname(); err == nil {
			host = name
		}
	}
	return net.JoinHostPort(host, port)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newVerifier returns the token verifier HUB_JWT_* ask for, or nil (and a
// warning) when none is set: the node then runs open.
func newVerifier(cfg config.Config, log *slog.Logger) (*auth.Verifier, error) {
	if cfg.JWTSecret == "" && cfg.JWTPublicKeyFile == "" {
		log.Warn("authentication is off: every client may subscribe and publish to every room; " +
			"set HUB_JWT_SECRET or HUB_JWT_PUBLIC_KEY_FILE in production")
		return nil, nil
	}
	v, err := auth.New(auth.Config{
		Secret: cfg.JWTSecret, PublicKeyFile: cfg.JWTPublicKeyFile,
		Audience: cfg.JWTAudience, Issuer: cfg.JWTIssuer,
	})
	if err != nil {
		name := "HUB_JWT_SECRET"
		if cfg.JWTPublicKeyFile != "" {
			name = "HUB_JWT_PUBLIC_KEY_FILE"
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

// redisLogger sends go-redis's own log lines to slog at debug level.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...))
}

func newLogger(cfg config.Config, out io.Writer) *slog.Logger {
	level, _ := cfg.Level() // validated by config.Load
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(out, opts))
	}
	return slog.New(slog.NewJSONHandler(out, opts))
}

// serve runs the node until ctx ends, then drains it in order. A second
// SIGTERM or SIGINT during the drain forces the remaining steps.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, reg prometheus.Registerer,
	ln net.Listener, srv *server.Server, h *hub.Hub, b pubsub.Broker) error {
	mgr, err := lifecycle.New(cfg.DrainTimeout, log, reg)
	if err != nil {
		return err
	}
	httpSrv := srv.HTTPServer()

	// Start in order: broker, hub, then the listener.
	brokerCtx, stopBroker := context.WithCancel(context.Background())
	defer stopBroker()
	hubCtx, stopHub := context.WithCancel(context.Background())
	defer stopHub()
	brokerDone, hubDone, httpDone := make(chan error, 1), make(chan error, 1), make(chan error, 1)
	go func() { brokerDone <- b.Run(brokerCtx, h) }()
	go func() { hubDone <- h.Run(hubCtx) }()
	go func() {
		if err := httpSrv.Serve(srv.Listener(ln)); !errors.Is(err, http.ErrServerClosed) {
			httpDone <- fmt.Errorf("http: %w", err)
			return
		}
		httpDone <- nil
	}()

	// Stop in order, every step bounded by what is left of HUB_DRAIN_TIMEOUT.
	mgr.OnStop("not-ready", func(ctx context.Context) error {
		srv.SetDraining() // /readyz 503, upgrades 503
		return nil
	})
	mgr.OnStop("drain-delay", func(ctx context.Context) error {
		return sleep(ctx, cfg.DrainDelay) // the load balancer notices /readyz
	})
	mgr.OnStop("unsubscribe", b.StopSubscriptions)
	mgr.OnStop("stop-accepting", func(ctx context.Context) error {
		err := httpSrv.Shutdown(ctx) // leaves hijacked WebSockets to the hub
		if ctx.Err() != nil {
			httpSrv.Close()
		}
		return err
	})
	// The hub closes its clients with 1012 and a reconnect hint, paced to
	// fit the deadline, waits for every one to leave, and stops (cutting
	// what is left when the deadline passes).
	mgr.OnStop("close-clients", func(ctx context.Context) error {
		return h.Shutdown(ctx, hub.DrainOptions{ReconnectWindow: cfg.ReconnectWindow})
	})
	mgr.OnStop("drain-unregistrations", srv.Wait) // every WebSocket session has returned
	mgr.OnStop("stop-hub", func(ctx context.Context) error {
		stopHub()
		return wait(ctx, hubDone)
	})
	// The node's presence entries that are left (and its place in the
	// cluster view) go, with their leaves, before Redis closes.
	mgr.OnStop("leave-cluster", b.LeaveCluster)
	mgr.OnStop("close-broker", func(ctx context.Context) error {
		stopBroker()
		err := wait(ctx, brokerDone)
		return errors.Join(err, b.Close())
	})

	select {
	case <-ctx.Done():
		log.Info("stop signal received: draining", "timeout", cfg.DrainTimeout.String())
	case err := <-httpDone:
		log.Error("http server failed: draining", "err", err)
	}
	force, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	go func() {
		<-force.Done()
		if mgr.Finished() {
			return
		}
		log.Warn("second stop signal: forcing the rest of the drain")
	}()
	if err := mgr.Stop(force); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// forcedGrace is how long a forced step still waits for a goroutine that was
// told to stop and is known to return promptly.
const forcedGrace = 2 * time.Second

// wait waits for a component's Run to return. Past ctx's end it still grants
// forcedGrace: a Run told to stop returns at once, and a forced drain should
// not leave it behind.
func wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(forcedGrace):
		return errors.New("did not stop in time")
	}
}
