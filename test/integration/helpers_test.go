// Package integration tests hubcluster as users run it: real node processes
// (the built binary), real Redis in Docker through testcontainers, real
// WebSocket clients over loopback sockets.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// nodeBinary is the node built once for the whole package by TestMain.
var nodeBinary string

// redisImage is the image integration tests run Redis from.
func redisImage() string {
	if img := os.Getenv("HUB_TEST_REDIS_IMAGE"); img != "" {
		return img
	}
	return "redis:7-alpine"
}

// redisServer is a Redis container.
type redisServer struct {
	ctr  *testcontainers.DockerContainer
	addr string // host:port on loopback
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	ctx := context.Background()
	ctr, err := testcontainers.Run(ctx, redisImage(),
		testcontainers.WithExposedPorts("6379/tcp"),
		testcontainers.WithWaitStrategy(wait.ForListeningPort("6379/tcp").WithStartupTimeout(60*time.Second)),
	)
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start redis container from %s: %v", redisImage(), err)
	}
	r := &redisServer{ctr: ctr}
	r.refreshAddr(t)
	return r
}

func (r *redisServer) refreshAddr(t *testing.T) {
	t.Helper()
	addr, err := r.ctr.PortEndpoint(context.Background(), "6379/tcp", "")
	if err != nil {
		t.Fatalf("redis port: %v", err)
	}
	r.addr = addr
}

func (r *redisServer) stop(t *testing.T) {
	t.Helper()
	timeout := time.Second
	if err := r.ctr.Stop(context.Background(), &timeout); err != nil {
		t.Fatalf("stop redis: %v", err)
	}
}

// start starts a stopped container again; its host port may change.
func (r *redisServer) start(t *testing.T) {
	t.Helper()
	if err := r.ctr.Start(context.Background()); err != nil {
		t.Fatalf("start redis: %v", err)
	}
	r.refreshAddr(t)
}

func (r *redisServer) client(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// proxy is a TCP proxy on loopback between nodes and Redis. Its upstream can
// change (a restarted container has a new port), be cut (new connections are
// refused), or go silent (established connections stop carrying bytes while
// staying open, as a broken middlebox does).
type proxy struct {
	ln net.Listener

	mu            sync.Mutex
	upstream      string // empty: refuse connections
	silencedFlags []*bool
	conns         map[net.Conn]struct{}
	gate          chan struct{} // non-nil while stalled: closed on resume
	wg            sync.WaitGroup
}

// stall holds every byte in both directions, on every connection, until
// resume: Redis answers nothing, and then everything at once, as a Redis
// that stops for a while does. Nothing is lost.
func (p *proxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
}

func (p *proxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

func newProxy(t *testing.T, upstream string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, upstream: upstream, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) setUpstream(addr string) {
	p.mu.Lock()
	p.upstream = addr
	p.mu.Unlock()
}

// silence stops every established connection from carrying bytes; new
// connections work.
func (p *proxy) silence() {
	p.mu.Lock()
	for _, f := range p.silencedFlags {
		*f = true
	}
	p.mu.Unlock()
}

// cut closes every established connection and refuses new ones.
func (p *proxy) cut() {
	p.mu.Lock()
	p.upstream = ""
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.resume()
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) accept() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		upstream := p.upstream
		p.mu.Unlock()
		if upstream == "" {
			down.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", upstream, 2*time.Second)
		if err != nil {
			down.Close()
			continue
		}
		p.track(down)
		p.track(up)
		gen := p.generation()
		p.wg.Go(func() { p.pipe(up, down, gen) })
		p.wg.Go(func() { p.pipe(down, up, gen) })
	}
}

// generation is a token that pipes check: once silence is called, pipes of
// connections made before stop forwarding.
func (p *proxy) generation() *bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	silenced := false
	p.silencedFlags = append(p.silencedFlags, &silenced)
	return &silenced
}

func (p *proxy) pipe(dst, src net.Conn, silenced *bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			mute, gate := *silenced, p.gate
			p.mu.Unlock()
			if gate != nil {
				<-gate
			}
			if !mute {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// node is a running node process.
type node struct {
	t      *testing.T
	id     string
	addr   string
	cmd    *exec.Cmd
	logs   *hubtest.LogBuffer
	exited chan error
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// uniquePrefix is a Redis channel prefix no other test uses.
func uniquePrefix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t" + hex.EncodeToString(b) + ":"
}

// startNode starts the node binary with env on a free loopback port. It is
// stopped with SIGTERM at cleanup, and its log is printed if the test failed.
func startNode(t *testing.T, id string, env ...string) *node {
	t.Helper()
	addr := freePort(t)
	cmd := exec.Command(nodeBinary)
	cmd.Env = append([]string{
		"HUB_ADDR=" + addr, "HUB_NODE_ID=" + id, "HUB_LOG_LEVEL=debug", "HUB_DRAIN_TIMEOUT=10s",
		"PATH=" + os.Getenv("PATH"),
	}, env...)
	n := &node{t: t, id: id, addr: addr, cmd: cmd, logs: &hubtest.LogBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout = n.logs
	cmd.Stderr = n.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	go func() { n.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		n.signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("node %s log:\n%s", id, n.logs.String())
		}
	})
	return n
}

// wait waits for the process to exit and returns its exit code.
func (n *node) wait(timeout time.Duration) int {
	n.t.Helper()
	select {
	case err := <-n.exited:
		n.exited <- err // for cleanup
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		n.t.Fatalf("node %s: %v", n.id, err)
	case <-time.After(timeout):
		n.t.Fatalf("node %s did not exit within %v", n.id, timeout)
	}
	return -1
}

func (n *node) signal(sig os.Signal) {
	if n.cmd.Process != nil {
		n.cmd.Process.Signal(sig)
	}
}

func (n *node) url(path string) string { return "http://" + n.addr + path }

// readyStatus returns /readyz's status code and reason.
func (n *node) readyStatus() (int, string) {
	resp, err := http.Get(n.url("/readyz"))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var body struct{ Reason string }
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Reason
}

// waitReady polls /readyz until it answers 200, and returns how long it took.
func (n *node) waitReady(timeout time.Duration) time.Duration {
	n.t.Helper()
	return n.waitStatus(200, timeout)
}

func (n *node) waitStatus(code int, timeout time.Duration) time.Duration {
	n.t.Helper()
	start := time.Now()
	var got int
	var reason string
	if !hubtest.Poll(timeout, func() bool { got, reason = n.readyStatus(); return got == code }) {
		n.t.Fatalf("node %s: /readyz stayed %d (%s), want %d", n.id, got, reason, code)
	}
	return time.Since(start)
}

// metric returns the value of a metric line (name with labels, exactly as
// exposed), or -1 if absent.
func (n *node) metric(name string) float64 {
	n.t.Helper()
	// No keep-alive: an idle connection of ours would count among the
	// node's goroutines and descriptors that tests compare.
	resp, err := metricsClient.Get(n.url("/metrics"))
	if err != nil {
		n.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

var metricsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

func (n *node) publishHTTP(room string, data any) int {
	n.t.Helper()
	code, err := n.tryPublishHTTP(room, data)
	if err != nil {
		n.t.Fatalf("POST /v1/publish: %v", err)
	}
	return code
}

// tryPublishHTTP is publishHTTP for any goroutine: it does not fail the test.
func (n *node) tryPublishHTTP(room string, data any) (int, error) {
	body, _ := json.Marshal(map[string]any{"room": room, "data": data})
	resp, err := http.Post(n.url("/v1/publish"), "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// wsURL is the node's WebSocket endpoint.
func (n *node) wsURL() string { return "ws://" + n.addr + "/ws" }

// dialNode connects a client to n (see hubtest.Client: it reads in the
// background, queues without bound, and is closed when the test ends).
func dialNode(t *testing.T, n *node) *hubtest.Client {
	t.Helper()
	return hubtest.Dial(t, n.wsURL(), nil)
}

func buildNode() (string, func(), error) {
	if bin := os.Getenv("HUB_TEST_NODE_BINARY"); bin != "" {
		// A node built elsewhere: to run these tests against another
		// version (an older one, to watch a regression test fail).
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "hubcluster-it")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "node")
	cmd := exec.Command("go", "build", "-race", "-o", bin, "github.com/hubcluster/hubcluster/cmd/node")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}
