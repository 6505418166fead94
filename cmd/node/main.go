// Command node runs one hubcluster node: a WebSocket hub that shares its rooms
// with the other nodes through Redis, or runs alone on an in-memory broker.
// Every setting comes from HUB_ environment variables (see the README).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/hubcluster/hubcluster/internal/config"
	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

func main() {
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	broker, err := newBroker(cfg, log, reg)
	if err != nil {
		return err
	}
	h, err := hub.New(hub.Config{
		NodeID:          cfg.NodeID,
		SendQueue:       cfg.SendQueue,
		MaxMessageBytes: cfg.MaxMessageBytes,
		WriteTimeout:    cfg.WriteTimeout,
		PingInterval:    cfg.PingInterval,
		Logger:          log,
		Registerer:      reg,
	}, broker)
	if err != nil {
		return err
	}
	srv := server.New(server.Config{
		APIKey:          cfg.APIKey,
		AllowedOrigins:  cfg.AllowedOrigins,
		MaxMessageBytes: cfg.MaxMessageBytes,
		Ready:           broker.Ready,
		Gatherer:        reg,
		Logger:          log,
	}, h)

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on HUB_ADDR %q: %w", cfg.Addr, err)
	}
	brokerName := "memory"
	if cfg.RedisURL != "" {
		brokerName = "redis " + cfg.RedactedRedisURL()
	}
	log.Info("node started", "addr", ln.Addr().String(), "node_id", cfg.NodeID, "broker", brokerName)

	return serve(ctx, cfg, log, ln, srv, h, broker)
}

// broker is what the node needs of its broker: pubsub.Memory or pubsub.Redis.
type broker interface {
	hub.Broker
	Run(ctx context.Context, sink pubsub.Sink) error
	Ready() error
	Close() error
}

func newBroker(cfg config.Config, log *slog.Logger, reg prometheus.Registerer) (broker, error) {
	if cfg.RedisURL == "" {
		return pubsub.NewMemory(), nil
	}
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})
	b, err := pubsub.NewRedis(pubsub.RedisConfig{
		URL:           cfg.RedisURL,
		Prefix:        cfg.RedisPrefix,
		NodeID:        cfg.NodeID,
		ProbeInterval: cfg.ProbeInterval,
		ProbeTimeout:  cfg.ProbeTimeout,
		Logger:        log,
		Registerer:    reg,
	})
	if err != nil {
		return nil, fmt.Errorf("HUB_REDIS_URL: %w", err)
	}
	return b, nil
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

// serve runs the node until ctx ends, then stops it.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, ln net.Listener, srv *server.Server, h *hub.Hub, broker broker) error {
	hubCtx, stopHub := context.WithCancel(context.Background())
	defer stopHub()
	httpSrv := srv.HTTPServer()

	var g errgroup.Group
	g.Go(func() error { return h.Run(hubCtx) })
	g.Go(func() error { return broker.Run(hubCtx, h) })
	g.Go(func() error {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})

	<-ctx.Done()
	log.Info("stopping")
	srv.SetDraining()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	stopHub()
	err := g.Wait()
	broker.Close()
	log.Info("stopped")
	return err
}
