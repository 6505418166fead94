// Package server serves a node's HTTP endpoints: the WebSocket upgrade on /ws,
// POST /v1/publish, GET /v1/history, /healthz, /readyz, /metrics, and the
// demo at / when one is configured.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/logthrottle"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Hub is what the server needs of the local hub.
type Hub interface {
	Serve(conn *hub.Conn, info hub.ConnInfo)
	Publish(ctx context.Context, room string, data []byte, key string) (pubsub.Receipt, error)
	History(ctx context.Context, room string, after uint64, limit int) (pubsub.History, error)
	Running() bool
}

var _ Hub = (*hub.Hub)(nil)

// Config holds the server's settings.
type Config struct {
	// APIKey, when set, is the bearer key POST /v1/publish requires.
	APIKey string
	// AllowedOrigins are the origin patterns a browser may connect from, beside
	// the server's own host.
	AllowedOrigins []string
	// MaxMessageBytes bounds a publish body's data.
	MaxMessageBytes int64
	// Ready reports whether fan-out works (the broker is reachable and its
	// subscription alive); nil means always.
	Ready func() error
	// Gatherer serves /metrics; nil means the default registry.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// ReadHeaderTimeout bounds how long a client may take to send its request
	// headers (default 5s, and at most ReadTimeout).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds how long a client may take to send a whole plain
	// request, headers and body (default 10s); WriteTimeout bounds the time
	// from the end of its headers to the end of the response (default
	// ReadTimeout + 30s): it must leave room for the slowest handler, a
	// publish waiting for the broker. Neither binds a WebSocket once it is
	// upgraded.
	ReadTimeout, WriteTimeout time.Duration
	// MaxHTTPConnections bounds the node's connections that are not
	// WebSockets: plain requests, idle keep-alives, upgrades in progress.
	// Beyond it a new connection gets 503 and is closed before any request
	// is read. 0: no limit.
	MaxHTTPConnections int
	// MaxHTTPConnectionsPerIP bounds the share of them one peer address may
	// hold (beyond it, 429 and closed), so that one client cannot take them
	// all; peers in TrustedProxies, which carry many clients, are exempt.
	// 0: no limit.
	MaxHTTPConnectionsPerIP int
	// MaxConnections bounds the WebSocket connections of the node: beyond it
	// upgrades get 503 before any WebSocket work. 0: no limit.
	MaxConnections int
	// MaxConnectionsPerIP bounds them per client IP: beyond it, 429. 0: no limit.
	MaxConnectionsPerIP int
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// Registerer receives the server's metrics (default: not registered).
	Registerer prometheus.Registerer
	// Demo, when set, serves the GET requests no other route takes: the chat
	// demo of HUB_DEMO at / and /demo/.
	Demo http.Handler
}

// refusalLogInterval is how often at most a throttled log line is written
// for one kind of refusal.
const refusalLogInterval = 10 * time.Second

// Server routes the node's endpoints. Its methods may be called concurrently.
type Server struct {
	cfg      Config
	hub      Hub
	log      *slog.Logger
	mux      *http.ServeMux
	draining atomic.Bool
	limits   connLimits
	refused  *prometheus.CounterVec
	sessions sync.WaitGroup // one per WebSocket connection being served
	logs     refusalLogs

	httpConns      *httpConns
	httpRefused    *prometheus.CounterVec
	acceptFailures prometheus.Counter
}

// refusalLogs throttle the log lines of refusals, which a client can cause
// at will: one per kind and interval, with the count of the rest.
type refusalLogs struct {
	maxConns, maxConnsPerIP, origin, handshake, publishOrigin *logthrottle.Throttle
	httpConns, httpConnsPerIP, accept                         *logthrottle.Throttle
	publishFailed, presenceFailed                             *logthrottle.Throttle
}

func newRefusalLogs(log *slog.Logger) refusalLogs {
	return refusalLogs{
		maxConns:      logthrottle.New(log, slog.LevelWarn, "upgrade refused: node at HUB_MAX_CONNECTIONS", refusalLogInterval),
		maxConnsPerIP: logthrottle.New(log, slog.LevelInfo, "upgrade refused: client IP at HUB_MAX_CONNECTIONS_PER_IP", refusalLogInterval),
		origin:        logthrottle.New(log, slog.LevelInfo, "upgrade refused: origin not allowed", refusalLogInterval),
		handshake:     logthrottle.New(log, slog.LevelInfo, "upgrade refused", refusalLogInterval),
		publishOrigin: logthrottle.New(log, slog.LevelInfo, "publish refused: origin not allowed", refusalLogInterval),
		httpConns: logthrottle.New(log, slog.LevelWarn,
			"connection refused: node at HUB_MAX_HTTP_CONNECTIONS (connections that are not WebSockets)", refusalLogInterval),
		httpConnsPerIP: logthrottle.New(log, slog.LevelInfo,
			"connection refused: peer address at HUB_MAX_HTTP_CONNECTIONS_PER_IP", refusalLogInterval),
		// Accept fails when the process is out of file descriptors ("too many
		// open files"); http.Server retries, and says so only at debug.
		accept:         logthrottle.New(log, slog.LevelWarn, "accept failed", refusalLogInterval),
		publishFailed:  logthrottle.New(log, slog.LevelWarn, "publish failed", refusalLogInterval),
		presenceFailed: logthrottle.New(log, slog.LevelWarn, "presence request failed", refusalLogInterval),
	}
}

// New returns a Server for h.
func New(cfg Config, h Hub) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = cfg.ReadTimeout + 30*time.Second
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 5 * time.Second
	}
	cfg.ReadHeaderTimeout = min(cfg.ReadHeaderTimeout, cfg.ReadTimeout)
	s := &Server{cfg: cfg, hub: h, log: cfg.Logger.With("component", "server"), mux: http.NewServeMux(),
		limits: connLimits{max: cfg.MaxConnections, maxPerIP: cfg.MaxConnectionsPerIP},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hub_upgrades_refused_total", Help: "WebSocket upgrades refused before any WebSocket work, by reason.",
		}, []string{"reason"}),
	}
	s.logs = newRefusalLogs(s.log)
	s.httpConns = newHTTPConns(cfg.MaxHTTPConnections, cfg.MaxHTTPConnectionsPerIP, cfg.TrustedProxies)
	s.httpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hub_http_connections_refused_total",
		Help: "Connections closed before any request was read, at HUB_MAX_HTTP_CONNECTIONS or HUB_MAX_HTTP_CONNECTIONS_PER_IP, by reason.",
	}, []string{"reason"})
	s.acceptFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hub_accept_failures_total", Help: "Failed accepts on the listener, such as for want of file descriptors.",
	})
	httpConnsGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hub_http_connections", Help: "Open connections that are not WebSockets: plain requests, idle keep-alives, upgrades in progress.",
	}, func() float64 { return float64(s.httpConns.count()) })
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.refused, s.httpRefused, s.acceptFailures, httpConnsGauge)
	}
	s.mux.HandleFunc("GET /ws", s.serveWS)
	s.mux.HandleFunc("POST /v1/publish", s.servePublish)
	s.mux.HandleFunc("GET /v1/history", s.serveHistory)
	s.routePresence()
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	if cfg.Demo != nil {
		s.mux.Handle("GET /", cfg.Demo) // what no other route takes; the demo answers 404 beyond its own
	}
	return s
}

// ServeHTTP routes r.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// HTTPServer returns an http.Server for s. Its timeouts keep a half-sent
// request (headers or body) from holding a connection open, and its
// ConnState hook bounds the connections that are not WebSockets; a WebSocket
// is bound by neither once upgraded (net/http, and hub.Accept again, clear
// the deadlines of a connection that is taken over). Serve it on
// Listener(ln).
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       60 * time.Second,
		ConnState:         s.connState,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// connState counts the HTTP server's connections that are not WebSockets,
// and refuses one beyond the limits. It runs on the server's accept loop
// for StateNew, so it never blocks: the refusal is a short write to a
// fresh socket, with a deadline, and a close.
func (s *Server) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		peer := peerAddr(c)
		reason := s.httpConns.admit(c, peer)
		if reason == "" {
			return
		}
		s.httpRefused.WithLabelValues(reason).Inc()
		status, code, msg := http.StatusServiceUnavailable, wire.CodeUnavailable, "node is at its connection limit"
		if reason == refusedHTTPPerIP {
			s.logs.httpConnsPerIP.Log("ip", peer.String())
			status, code, msg = http.StatusTooManyRequests, wire.CodeRateLimited, "too many connections from this address"
		} else {
			s.logs.httpConns.Log("ip", peer.String())
		}
		refuseConn(c, status, code, msg)
	case http.StateHijacked, http.StateClosed:
		s.httpConns.done(c)
	}
}

// refuseConn answers c with status and closes it, before reading anything:
// the client reads the answer if it reads before the close resets the
// connection, and a closed connection otherwise.
func refuseConn(c net.Conn, status int, code, message string) {
	body, _ := json.Marshal(map[string]string{"code": code, "message": message})
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	c.Close()
}

// Listener returns ln with its accept failures logged at warn (throttled)
// and counted. http.Server retries such a failure with a backoff, and logs
// it only at debug: running out of file descriptors ("too many open files")
// would pass unnoticed.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &loggedListener{Listener: ln, log: s.logs.accept, failures: s.acceptFailures}
}

type loggedListener struct {
	net.Listener
	log      *logthrottle.Throttle
	failures prometheus.Counter
}

func (l *loggedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		l.failures.Inc()
		l.log.Log("addr", l.Addr().String(), "err", err)
	}
	return c, err
}

// SetDraining marks the node as draining: /readyz answers 503 and new
// WebSocket upgrades are refused with 503.
func (s *Server) SetDraining() { s.draining.Store(true) }

// Ready reports why the node cannot take clients, or nil: what /readyz says.
func (s *Server) Ready() error { return s.ready() }

// ready reports why the node cannot take clients, or nil.
func (s *Server) ready() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if !s.hub.Running() {
		return errors.New("hub not running")
	}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if err := s.ready(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	ip := clientIP(r, s.cfg.TrustedProxies)
	if err := s.ready(); err != nil {
		// A node that is not ready takes no new client, before any WebSocket
		// work; the load balancer or the client's backoff sends it elsewhere.
		s.refused.WithLabelValues("not_ready").Inc()
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "node not ready: "+err.Error())
		return
	}
	if err := checkOrigin(r, s.cfg.AllowedOrigins); err != nil {
		s.refused.WithLabelValues("origin").Inc()
		s.logs.origin.Log("ip", ip.String(), "err", err)
		writeError(w, http.StatusForbidden, wire.CodeForbidden, "origin not allowed")
		return
	}
	switch s.limits.acquire(ip) {
	case http.StatusServiceUnavailable:
		s.refused.WithLabelValues("max_connections").Inc()
		s.logs.maxConns.Log("ip", ip.String())
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "node is at its connection limit")
		return
	case http.StatusTooManyRequests:
		s.refused.WithLabelValues("max_connections_per_ip").Inc()
		s.logs.maxConnsPerIP.Log("ip", ip.String())
		writeError(w, http.StatusTooManyRequests, wire.CodeRateLimited, "too many connections from this address")
		return
	}
	conn, err := hub.Accept(w, r, &websocket.AcceptOptions{
		// checkOrigin above has decided, with the same rules that POST
		// /v1/publish uses; this turns off only Accept's own copy of them.
		InsecureSkipVerify: true,
		// Compression stays off: it costs tens of KiB per connection, and
		// compressing secrets next to attacker-chosen text leaks them
		// (CRIME/BREACH).
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		// Accept has written the HTTP error (426 for a request that is not
		// an upgrade).
		s.refused.WithLabelValues("handshake").Inc()
		s.logs.handshake.Log("ip", ip.String(), "err", err)
		s.limits.release(ip)
		return
	}
	// The token may come as ?token=; it is never logged (no log line here
	// holds the URL).
	info := hub.ConnInfo{IP: ip.String(), Token: r.URL.Query().Get("token")}
	// Serve on a goroutine of its own and return: net/http's goroutine for
	// this connection, and the buffers it holds, go away (an idle connection
	// costs one small goroutine, not two).
	s.sessions.Go(func() {
		defer s.limits.release(ip)
		s.hub.Serve(conn, info)
	})
}

// Wait blocks until every WebSocket session the server started has ended, or
// ctx ends. The hub ends them when it drains or stops.
func (s *Server) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// servePublish serves POST /v1/publish. A web page must not be able to
// publish through a browser that can reach the node: a foreign Origin gets
// 403, and a body that is not declared application/json gets 415, since
// only such a request needs a CORS preflight, which this server never grants.
func (s *Server) servePublish(w http.ResponseWriter, r *http.Request) {
	if err := checkOrigin(r, s.cfg.AllowedOrigins); err != nil {
		s.logs.publishOrigin.Log("ip", clientIP(r, s.cfg.TrustedProxies).String(), "err", err)
		writeError(w, http.StatusForbidden, wire.CodeForbidden, "origin not allowed")
		return
	}
	if !s.keyOK(w, r) {
		return
	}
	if !isJSON(r.Header) {
		writeError(w, http.StatusUnsupportedMediaType, wire.CodeBadRequest, "Content-Type must be application/json")
		return
	}
	limit := s.cfg.MaxMessageBytes + 1024
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "body is larger than the limit")
			return
		}
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "the body could not be read")
		return
	}
	req, werr := wire.DecodePublishBody(body)
	if werr != nil {
		writeError(w, http.StatusBadRequest, werr.Code, werr.Message)
		return
	}
	if int64(len(req.Data)) > s.cfg.MaxMessageBytes {
		writeError(w, http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "data is larger than the limit")
		return
	}
	rc, err := s.hub.Publish(r.Context(), req.Room, req.Data, req.IdempotencyKey)
	if err != nil {
		s.logs.publishFailed.Log("room", req.Room, "err", err)
		if errors.Is(err, pubsub.ErrUncertain) {
			writeError(w, http.StatusGatewayTimeout, wire.CodeTimeout,
				"the broker did not confirm the message in time; it may be delivered: retry with the same idempotency_key")
			return
		}
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "the message was not handed to the broker; retry")
		return
	}
	resp := map[string]any{"status": "accepted"}
	if rc.Offset != 0 {
		resp["epoch"], resp["offset"] = rc.Epoch, rc.Offset
	}
	if rc.Duplicate {
		resp["duplicate"] = true
	}
	writeJSON(w, http.StatusAccepted, resp)
}

// historyMessage is one message of a GET /v1/history answer.
type historyMessage struct {
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

// serveHistory answers GET /v1/history?room=R&since=N&limit=L: the room's
// stored messages after offset N, oldest first.
func (s *Server) serveHistory(w http.ResponseWriter, r *http.Request) {
	if !s.keyOK(w, r) {
		return
	}
	q := r.URL.Query()
	room := q.Get("room")
	if err := wire.ValidateRoom(room); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeBadRoom, err.Error())
		return
	}
	var since uint64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "since must be a whole number from 0")
			return
		}
		since = n
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "limit must be a whole number from 1")
			return
		}
		limit = n
	}
	h, err := s.hub.History(r.Context(), room, since, limit)
	switch {
	case errors.Is(err, pubsub.ErrNoHistory):
		writeError(w, http.StatusNotFound, "no_history", "this node keeps no history (HUB_HISTORY_SIZE=0)")
		return
	case err != nil:
		s.log.Warn("history read failed", "room", room, "err", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "the history could not be read; retry")
		return
	}
	msgs := make([]historyMessage, len(h.Messages))
	for i, m := range h.Messages {
		msgs[i] = historyMessage{Offset: m.Offset, Data: m.Data}
	}
	writeJSON(w, http.StatusOK, map[string]any{"room": room, "epoch": h.Epoch, "offset": h.Top, "messages": msgs})
}

// isJSON reports whether h declares one Content-Type, application/json,
// with any parameters (charset=utf-8).
func isJSON(h http.Header) bool {
	v := h.Values("Content-Type")
	if len(v) != 1 {
		return false
	}
	mt, _, err := mime.ParseMediaType(v[0])
	return err == nil && mt == "application/json"
}

// keyOK reports whether r carries the bearer key when one is set, and
// answers 401 when it does not.
func (s *Server) keyOK(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" || s.authorized(r) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="hubcluster"`)
	writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer key")
	return false
}

func (s *Server) authorized(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) == 1
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]string{"code": code, "message": message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
