package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/config"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestBadSettingStopsWithVariableName(t *testing.T) {
	for _, env := range []string{"HUB_MAX_MESSAGE_BYTES=abc", "HUB_ADDR=nonsense", "HUB_LOG_LEVEL=chatty",
		"HUB_JWT_PUBLIC_KEY_FILE=/nonexistent/key.pem", "HUB_JWT_SECRET=tooshort"} {
		err := run(context.Background(), []string{env}, io.Discard)
		name, _, _ := strings.Cut(env, "=")
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("run with %s: got %v, want an error naming %s", env, err, name)
		}
	}
}

func TestAddressInUseIsAnError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := startRun(t, ctx, nil)
	err := run(context.Background(), []string{"HUB_ADDR=" + addr}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "HUB_ADDR") {
		t.Errorf("second node on %s: got %v, want an error naming HUB_ADDR", addr, err)
	}
	cancel()
	<-done
}

// An HUB_ variable no setting reads is named in one warning at start; the
// test harness's and the compose file's are not.
func TestUnknownVariablesAreWarnedAbout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var logs hubtest.LogBuffer
	addr, done := startRunLogs(t, ctx, []string{"HUB_MAX_CONECTIONS=10", "HUB_TEST_REDIS_IMAGE=x", "HUB_LB_PORT=1"}, &logs)
	waitReady(t, "http://"+addr)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	var warnings []string
	for _, line := range logLines(t, logs.String()) {
		if line["level"] == "WARN" && strings.Contains(fmt.Sprint(line["msg"]), "unknown") {
			warnings = append(warnings, fmt.Sprint(line["variables"]))
		}
	}
	if want := []string{"[HUB_MAX_CONECTIONS]"}; !slices.Equal(warnings, want) {
		t.Errorf("got warnings about %v, want %v", warnings, want)
	}
}

func logLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(s) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// HUB_PING_INTERVAL=0 turns keepalive off, as the README says; the hub reads
// a zero PingInterval as its default.
func TestHubConfigPingInterval(t *testing.T) {
	tests := []struct {
		env  string
		want time.Duration
	}{
		{"HUB_PING_INTERVAL=0", -1},
		{"HUB_PING_INTERVAL=0s", -1},
		{"HUB_PING_INTERVAL=3s", 3 * time.Second},
		{"HUB_NODE_ID=x", 25 * time.Second},
	}
	for _, tt := range tests {
		cfg, err := config.Load([]string{tt.env})
		if err != nil {
			t.Fatal(err)
		}
		if got := hubConfig(cfg, "o", nil, nil).PingInterval; got != tt.want {
			t.Errorf("%s: got PingInterval %v, want %v", tt.env, got, tt.want)
		}
	}
}

// Out of the box the HTTP server bounds plain requests and the connections
// that are not WebSockets.
func TestServerConfigDefaults(t *testing.T) {
	cfg, err := config.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	got := serverConfig(cfg, nil, nil, nil)
	if got.ReadTimeout != 10*time.Second || got.WriteTimeout != 20*time.Second ||
		got.MaxHTTPConnections != 1024 || got.MaxHTTPConnectionsPerIP != 256 {
		t.Errorf("got ReadTimeout %v, WriteTimeout %v, MaxHTTPConnections %d, MaxHTTPConnectionsPerIP %d; want 10s, 20s, 1024, 256",
			got.ReadTimeout, got.WriteTimeout, got.MaxHTTPConnections, got.MaxHTTPConnectionsPerIP)
	}
}

// A request that declares a body and never sends it does not hold its
// connection past HUB_HTTP_READ_TIMEOUT.
func TestSlowBodyIsCut(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := startRun(t, ctx, []string{"HUB_HTTP_READ_TIMEOUT=200ms"})
	defer func() { cancel(); <-done }()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"r")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the node kept a half-sent body open for 10s")
	}
}

// Running out of file descriptors is a warning in the node's log, not a
// debug line: accept failures go through a logging listener.
func TestAcceptFailuresAreWarnedAbout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var logs hubtest.LogBuffer
	addr, done := startRunLogs(t, ctx, nil, &logs)
	defer func() { cancel(); <-done }()
	waitReady(t, "http://"+addr)

	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Leave this process no descriptor to spare, then dial the node: its
	// accept fails for want of one.
	low := saved
	low.Cur = highestFD(t) + 1
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	warned := func() bool { return strings.Contains(logs.String(), `"msg":"accept failed"`) }
	deadline := time.Now().Add(10 * time.Second)
	d := net.Dialer{Timeout: time.Second} // a full backlog drops connects
	for !warned() && time.Now().Before(deadline) {
		c, err := d.Dial("tcp", addr)
		if err == nil {
			conns = append(conns, c)
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if !errors.Is(err, syscall.EMFILE) {
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved)
			t.Fatalf("dial: %v", err)
		}
		// This end took the last descriptor: free one, so that the next
		// dial's connection waits for an accept that cannot get one.
		if len(conns) > 0 {
			conns[0].Close()
			conns = conns[1:]
		}
		time.Sleep(time.Millisecond)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	if !warned() {
		t.Fatalf("no accept failure warned about in 10s with no descriptor to spare; log:\n%s", logs.String())
	}
	for _, line := range logLines(t, logs.String()) {
		if line["msg"] == "accept failed" && (line["level"] != "WARN" || !strings.Contains(fmt.Sprint(line["err"]), "too many open files")) {
			t.Errorf("got %v, want a warning naming the error", line)
		}
	}
}

// highestFD is the highest file descriptor this process has open.
func highestFD(t *testing.T) uint64 {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var top uint64
	for _, e := range entries {
		if n, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && n > top {
			top = n
		}
	}
	return top
}

// startRun starts run on a free loopback port and returns its address, read
// from the start-up log line.
func startRun(t *testing.T, ctx context.Context, env []string) (string, chan error) {
	t.Helper()
	return startRunLogs(t, ctx, env, io.Discard)
}

// startRunLogs is startRun with the node's log lines copied to logs.
func startRunLogs(t *testing.T, ctx context.Context, env []string, logs io.Writer) (string, chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"HUB_ADDR=127.0.0.1:0", "HUB_NODE_ID=t", "HUB_DRAIN_DELAY=0s"}, env...), pw)
		pw.Close()
	}()
	sc := bufio.NewScanner(io.TeeReader(pr, logs))
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "node started" {
			go io.Copy(logs, pr)
			return line.Addr, done
		}
	}
	t.Fatalf("node did not start: %v", <-done)
	return "", nil
}

func TestRunServesAndStopsCleanly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := startRun(t, ctx, []string{"HUB_API_KEY=secret", "HUB_DRAIN_DELAY=0s"})
	base := "http://" + addr
	waitReady(t, base)

	dialCtx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	var conns []*websocket.Conn
	for range 2 {
		c, _, err := websocket.Dial(dialCtx, "ws://"+addr+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.Write(dialCtx, websocket.MessageText, []byte(`{"type":"subscribe","room":"demo","id":1}`))
		if _, p, err := c.Read(dialCtx); err != nil || !strings.Contains(string(p), `"ack"`) {
			t.Fatalf("subscribe: got %s, %v", p, err)
		}
		conns = append(conns, c)
	}
	req, _ := http.NewRequest("POST", base+"/v1/publish", strings.NewReader(`{"room":"demo","data":"hello"}`))
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 202 {
		t.Fatalf("publish: got %v, %v; want 202", resp, err)
	}
	resp.Body.Close()
	for _, c := range conns {
		if _, p, err := c.Read(dialCtx); err != nil || string(p) != `{"type":"message","room":"demo","offset":1,"data":"hello"}` {
			t.Fatalf("got %s, %v", p, err)
		}
	}
	cancel()
	for _, c := range conns { // reading answers the server's close handshake
		_, _, err := c.Read(dialCtx)
		if got := websocket.CloseStatus(err); got != websocket.StatusServiceRestart {
			t.Errorf("client after the node stopped: got %v, want close 1012", err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}
	http.DefaultClient.CloseIdleConnections()
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	hubtest.Eventually(t, 10*time.Second, func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "the node's /readyz to answer 200")
	http.DefaultClient.CloseIdleConnections()
}

// HUB_DEMO=true serves the chat page at / (it is off by default), with the
// JavaScript client and the node's id beside it.
func TestDemoPage(t *testing.T) {
	tests := []struct {
		env      []string
		path     string
		want     int
		wantBody string
	}{
		{nil, "/", 404, ""},
		{[]string{"HUB_DEMO=true"}, "/", 200, "hubcluster chat"},
		{[]string{"HUB_DEMO=true"}, "/demo/hubcluster.js", 200, "export function connect("},
		{[]string{"HUB_DEMO=true"}, "/demo/node", 200, `"node":"t"`},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithCancel(context.Background())
		addr, done := startRun(t, ctx, tt.env)
		resp, err := http.Get("http://" + addr + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		http.DefaultClient.CloseIdleConnections()
		if resp.StatusCode != tt.want || !strings.Contains(string(body), tt.wantBody) {
			t.Errorf("%v: GET %s: got %d, want %d with %q", tt.env, tt.path, resp.StatusCode, tt.want, tt.wantBody)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
	}
}
