package server

import (
	"bufio"
	"context"
	"errors"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A request that declares a body and never sends it is cut after
// ReadTimeout, on every endpoint: it does not hold its connection (a file
// descriptor) for ever.
func TestSlowBodiesDoNotHoldConnections(t *testing.T) {
	n := startNode(t, Config{ReadTimeout: 200 * time.Millisecond}, true)
	addr := strings.TrimPrefix(n.url, "http://")
	for _, req := range []string{
		"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"r",
		"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"r",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
		"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
		"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
		"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
		"GET /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
	} {
		line, _, _ := strings.Cut(req, "\r\n")
		t.Run(line, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, req)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(conn)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server kept a half-sent body open for 10s")
			}
		})
	}
}

// The server's read and write timeouts do not bind a WebSocket: an idle one
// outlives them many times over and still works.
func TestWebSocketOutlivesHTTPTimeouts(t *testing.T) {
	const timeout = 100 * time.Millisecond
	n := startNode(t, Config{ReadTimeout: timeout, WriteTimeout: timeout, ReadHeaderTimeout: timeout}, true)
	c := dial(t, n, nil)
	c.Send(`{"type":"subscribe","room":"r","id":1}`)
	if m := c.Next(10 * time.Second); m["type"] != "ack" {
		t.Fatalf("got %v, want ack", m)
	}
	// Nothing to wait for: the point is that time passes with the
	// connection idle, both ways, past every deadline the HTTP server set.
	time.Sleep(10 * timeout)
	c.Send(`{"type":"publish","room":"r","data":"late","id":2}`)
	got := map[string]bool{}
	for !got["ack"] || !got["message"] {
		m, err := c.TryNext(10 * time.Second)
		if err != nil {
			t.Fatalf("after the timeouts: %v (got %v so far)", err, got)
		}
		got[m["type"].(string)] = true
	}
}

// halfSent opens a connection from local (an address on loopback) that sends
// half a request and holds it; the test's end closes it.
func halfSent(t *testing.T, n *node, local string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(n.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	return conn
}

// get does GET path on a connection of its own from local, and returns the
// status, or 0 when the server closed the connection without one.
func get(t *testing.T, n *node, local, path string) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(n.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("GET %s from %s: no answer in 30s", path, local)
		}
		return 0 // refused: closed, perhaps reset before the 503 was read
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitHTTPConns waits until the node counts want connections that are not
// WebSockets: the server counts a connection closed a moment after the
// client has read its last response.
func waitHTTPConns(t *testing.T, n *node, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.srv.httpConns.count() != want {
		if time.Now().After(deadline) {
			t.Fatalf("got %d HTTP connections, want %d", n.srv.httpConns.count(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// Connections that are not WebSockets are bounded, in all and per peer
// address, so that half-sent requests cannot take every file descriptor,
// and one address cannot take every slot: /healthz from elsewhere answers.
func TestHTTPConnectionLimits(t *testing.T) {
	long := time.Minute // the half-sent requests stay until the test ends
	n := startNode(t, Config{MaxHTTPConnections: 4, MaxHTTPConnectionsPerIP: 2, ReadHeaderTimeout: long, ReadTimeout: long}, true)
	first := halfSent(t, n, "127.0.0.1")
	halfSent(t, n, "127.0.0.1")
	waitHTTPConns(t, n, 2)
	if got := get(t, n, "127.0.0.1", "/healthz"); got != 429 && got != 0 {
		t.Errorf("a third connection from 127.0.0.1: got HTTP %d, want 429 or a closed connection", got)
	}
	if got := get(t, n, "127.0.0.2", "/healthz"); got != 200 {
		t.Errorf("/healthz from 127.0.0.2: got HTTP %d, want 200", got)
	}
	waitHTTPConns(t, n, 2)
	halfSent(t, n, "127.0.0.2")
	halfSent(t, n, "127.0.0.3")
	waitHTTPConns(t, n, 4)
	if got := get(t, n, "127.0.0.4", "/healthz"); got != 503 && got != 0 {
		t.Errorf("a fifth connection: got HTTP %d, want 503 or a closed connection", got)
	}

	// A closed connection gives its slot back.
	first.Close()
	deadline := time.Now().Add(10 * time.Second)
	for get(t, n, "127.0.0.4", "/healthz") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("the slot of a closed connection never came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A WebSocket counts as an HTTP connection only until it is upgraded.
func TestWebSocketsLeaveTheHTTPConnectionCount(t *testing.T) {
	n := startNode(t, Config{MaxHTTPConnections: 2, MaxHTTPConnectionsPerIP: 1}, true)
	for i := range 5 {
		c, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(n.url, "http")+"/ws", nil)
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("WebSocket %d: %v (HTTP %d)", i+1, err, status)
		}
		t.Cleanup(func() { c.CloseNow() })
		// The client may see the 101 a moment before the server counts
		// the connection out.
		waitHTTPConns(t, n, 0)
	}
}

// Behind a trusted proxy every client comes from the proxy's address: the
// per-address share does not apply to it.
func TestTrustedProxiesHaveNoHTTPShare(t *testing.T) {
	long := time.Minute
	n := startNode(t, Config{MaxHTTPConnections: 4, MaxHTTPConnectionsPerIP: 1, ReadHeaderTimeout: long, ReadTimeout: long,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, true)
	halfSent(t, n, "127.0.0.1")
	halfSent(t, n, "127.0.0.1")
	if got := get(t, n, "127.0.0.1", "/healthz"); got != 200 {
		t.Errorf("a third connection from the proxy: got HTTP %d, want 200", got)
	}
	waitHTTPConns(t, n, 2)
	halfSent(t, n, "127.0.0.2")
	waitHTTPConns(t, n, 3)
	if got := get(t, n, "127.0.0.2", "/healthz"); got != 429 && got != 0 {
		t.Errorf("a second connection from 127.0.0.2: got HTTP %d, want 429 or a closed connection", got)
	}
}

// failingListener fails every Accept with err.
type failingListener struct {
	net.Listener
	err error
}

func (l failingListener) Accept() (net.Conn, error) { return nil, l.err }

// Accept failures (out of file descriptors) are logged at warn, throttled,
// and counted; a closed listener is not a failure.
func TestAcceptFailuresAreLogged(t *testing.T) {
	var logs hubtest.LogBuffer
	s := New(Config{Logger: logs.Logger()}, nil)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	ln := s.Listener(failingListener{Listener: inner, err: &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}})
	for range 50 {
		if _, err := ln.Accept(); !errors.Is(err, syscall.EMFILE) {
			t.Fatalf("got %v, want the listener's error unchanged", err)
		}
	}
	lines := logs.Lines(t, "accept failed")
	if len(lines) != 1 || lines[0]["level"] != "WARN" || !strings.Contains(lines[0]["err"].(string), "too many open files") {
		t.Errorf("got %v, want one warning that names the error", lines)
	}
	if got := testutil.ToFloat64(s.acceptFailures); got != 50 {
		t.Errorf("got hub_accept_failures_total %v, want 50", got)
	}
	closed := s.Listener(failingListener{Listener: inner, err: net.ErrClosed})
	closed.Accept()
	if got := testutil.ToFloat64(s.acceptFailures); got != 50 {
		t.Errorf("a closed listener: got hub_accept_failures_total %v, want 50", got)
	}
}
