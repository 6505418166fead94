package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type node struct {
	srv    *Server
	hub    *hub.Hub
	broker *pubsub.Memory
	http   *httptest.Server
	url    string
	stop   func()
}

// startNode serves a hub on a real loopback socket. run says whether the hub's
// Run is started.
func startNode(t *testing.T, cfg Config, run bool) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	broker := pubsub.NewMemory(pubsub.MemoryConfig{})
	h, err := hub.New(hub.Config{NodeID: "n1", Registerer: reg}, broker)
	cfg.Registerer = reg
	if err != nil {
		t.Fatal(err)
	}
	cfg.Gatherer = reg
	cfg.Ready = broker.Ready
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 65536
	}
	s := New(cfg, h)
	ts := httptest.NewUnstartedServer(s)
	ts.Config = s.HTTPServer()
	ts.Start()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if run {
		wg.Go(func() { h.Run(ctx) })
		waitRunning(t, h)
	}
	n := &node{srv: s, hub: h, broker: broker, http: ts, url: ts.URL, stop: func() { cancel(); wg.Wait() }}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if !run {
			h.Run(ctx) // stops the hub: cuts what it still serves
		}
		ts.Close()
	})
	return n
}

// waitRunning waits until Run has started, failing the test after 10s.
func waitRunning(t *testing.T, h *hub.Hub) {
	t.Helper()
	hubtest.Eventually(t, 10*time.Second, h.Running, "the hub's Run to start")
}

func wsURL(n *node) string { return "ws" + strings.TrimPrefix(n.url, "http") + "/ws" }

func dial(t *testing.T, n *node, h http.Header) *hubtest.Client {
	t.Helper()
	return hubtest.Dial(t, wsURL(n), &websocket.DialOptions{HTTPHeader: h})
}

func postPublish(t *testing.T, n *node, key, body string) (int, map[string]any) {
	t.Helper()
	h := http.Header{"Content-Type": {"application/json"}}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	return postPublishWith(t, n, h, body)
}

func postPublishWith(t *testing.T, n *node, h http.Header, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", n.url+"/v1/publish", strings.NewReader(body))
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("POST /v1/publish answered %d with a body that is not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, m
}

// With no API key, a web page a browser opens must not be able to publish:
// a form or text/plain POST (which needs no CORS preflight) gets 415, and a
// foreign Origin 403, by the rules the WebSocket upgrade uses.
func TestPublishRefusesCrossSiteRequests(t *testing.T) {
	n := startNode(t, Config{AllowedOrigins: []string{"app.example.com"}}, true)
	self := "http://" + strings.TrimPrefix(n.url, "http://")
	tests := []struct {
		name, contentType, origin string
		want                      int
		wantCode                  string
	}{
		{"json", "application/json", "", 202, ""},
		{"json with charset", "application/json; charset=utf-8", "", 202, ""},
		{"json in capitals", "Application/JSON", "", 202, ""},
		{"no content type", "", "", 415, "bad_request"},
		{"text/plain", "text/plain", "", 415, "bad_request"},
		{"text/plain carrying json", "text/plain; charset=application/json", "", 415, "bad_request"},
		{"form", "application/x-www-form-urlencoded", "", 415, "bad_request"},
		{"multipart", "multipart/form-data; boundary=x", "", 415, "bad_request"},
		{"json prefix", "application/jsonx", "", 415, "bad_request"},
		{"two types", "application/json, text/plain", "", 415, "bad_request"},
		{"foreign origin", "application/json", "http://evil.example.net", 403, "forbidden"},
		{"foreign origin, form", "application/x-www-form-urlencoded", "http://evil.example.net", 403, "forbidden"},
		{"opaque origin", "application/json", "null", 403, "forbidden"},
		{"own origin", "application/json", self, 202, ""},
		{"allowed origin", "application/json", "https://app.example.com", 202, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.contentType != "" {
				h.Set("Content-Type", tt.contentType)
			}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			code, body := postPublishWith(t, n, h, `{"room":"r","data":1}`)
			if code != tt.want {
				t.Fatalf("got %d %v, want %d", code, body, tt.want)
			}
			if tt.wantCode != "" && body["code"] != tt.wantCode {
				t.Fatalf("got code %v, want %s", body["code"], tt.wantCode)
			}
		})
	}
}

// The "done when", over real sockets: two clients in a room both get a
// message published by one of them and one published with POST /v1/publish.
func TestTwoClientsReceiveClientAndHTTPPublishes(t *testing.T) {
	n := startNode(t, Config{APIKey: "k"}, true)
	a, b := dial(t, n, nil), dial(t, n, nil)
	for _, c := range []*hubtest.Client{a, b} {
		c.Send(`{"type":"subscribe","room":"lobby","id":"s"}`)
		if m := c.Next(10 * time.Second); m["type"] != "ack" || m["id"] != "s" {
			t.Fatalf("got %v, want ack s", m)
		}
	}
	a.Send(`{"type":"publish","room":"lobby","data":{"text":"hi"}}`)
	for _, c := range []*hubtest.Client{a, b} {
		if m := c.Next(10 * time.Second); m["type"] != "message" || m["room"] != "lobby" || m["data"].(map[string]any)["text"] != "hi" {
			t.Fatalf("got %v, want the message", m)
		}
	}
	if code, body := postPublish(t, n, "k", "{\"room\":\"lobby\",\"data\":{\n  \"text\": \"from http\"\n}}"); code != http.StatusAccepted {
		t.Fatalf("POST /v1/publish: got %d %v, want 202", code, body)
	}
	for _, c := range []*hubtest.Client{a, b} {
		if m := c.Next(10 * time.Second); m["data"].(map[string]any)["text"] != "from http" {
			t.Fatalf("got %v, want the HTTP message", m)
		}
	}
}

func TestPublishEndpointRejections(t *testing.T) {
	n := startNode(t, Config{APIKey: "right", MaxMessageBytes: 1024}, true)
	tests := []struct {
		name, key, body string
		want            int
		wantCode        string
	}{
		{"no key", "", `{"room":"r","data":1}`, 401, "unauthorized"},
		{"wrong key", "wrong", `{"room":"r","data":1}`, 401, "unauthorized"},
		{"not JSON", "right", `room=r`, 400, "bad_request"},
		{"two values", "right", `{"room":"r","data":1}{}`, 400, "bad_request"},
		{"missing room", "right", `{"data":1}`, 400, "bad_room"},
		{"bad room", "right", `{"room":"a/b","data":1}`, 400, "bad_room"},
		{"missing data", "right", `{"room":"r"}`, 400, "bad_request"},
		{"too large", "right", `{"room":"r","data":"` + strings.Repeat("x", 4096) + `"}`, 413, "too_large"},
		{"ok", "right", `{"room":"r","data":[1,2,3]}`, 202, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := postPublish(t, n, tt.key, tt.body)
			if code != tt.want {
				t.Fatalf("got %d %v, want %d", code, body, tt.want)
			}
			if tt.wantCode != "" && body["code"] != tt.wantCode {
				t.Fatalf("got code %v, want %s", body["code"], tt.wantCode)
			}
		})
	}
	n.broker.Close()
	if code, body := postPublish(t, n, "right", `{"room":"r","data":1}`); code != 503 || body["code"] != "unavailable" {
		t.Fatalf("broker closed: got %d %v, want 503 unavailable", code, body)
	}
}

func TestOrigins(t *testing.T) {
	n := startNode(t, Config{AllowedOrigins: []string{"app.example.com"}}, true)
	tests := []struct {
		origin string
		want   int
	}{
		{"http://evil.example.net", http.StatusForbidden},
		{"https://app.example.com", http.StatusSwitchingProtocols},
		{"", http.StatusSwitchingProtocols}, // not a browser
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		conn, resp, err := websocket.Dial(context.Background(), wsURL(n), &websocket.DialOptions{HTTPHeader: h})
		if conn != nil {
			conn.CloseNow()
		}
		if resp == nil {
			t.Fatalf("origin %q: no response: %v", tt.origin, err)
		}
		if resp.StatusCode != tt.want {
			t.Errorf("origin %q: got HTTP %d, want %d", tt.origin, resp.StatusCode, tt.want)
		}
	}
}

func TestReadinessAndDraining(t *testing.T) {
	n := startNode(t, Config{}, false)
	get := func(path string) int {
		resp, err := http.Get(n.url + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/readyz"); got != 503 {
		t.Errorf("before Run: /readyz got %d, want 503", got)
	}
	if got := get("/healthz"); got != 200 {
		t.Errorf("/healthz got %d, want 200", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.hub.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitRunning(t, n.hub)
	if got := get("/readyz"); got != 200 {
		t.Errorf("running: /readyz got %d, want 200", got)
	}
	c := dial(t, n, nil)
	n.srv.SetDraining()
	if got := get("/readyz"); got != 503 {
		t.Errorf("draining: /readyz got %d, want 503", got)
	}
	_, resp, err := websocket.Dial(context.Background(), wsURL(n), nil)
	if err == nil || resp == nil || resp.StatusCode != 503 {
		t.Errorf("draining: upgrade got %v, want HTTP 503", err)
	}
	// The client that was already there is still served.
	c.Send(`{"type":"subscribe","room":"r","id":1}`)
	if m := c.Next(10 * time.Second); m["type"] != "ack" {
		t.Errorf("got %v, want ack", m)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	n := startNode(t, Config{}, true)
	c := dial(t, n, nil)
	c.Send(`{"type":"subscribe","room":"r","id":1}`)
	c.Next(10 * time.Second)
	resp, err := http.Get(n.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"hub_connections 1", "hub_rooms 1", "hub_messages_in_total 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// A request whose headers never finish is cut after ReadHeaderTimeout, and
// headers over MaxHeaderBytes are refused.
func TestHalfSentRequestsDoNotHoldConnections(t *testing.T) {
	n := startNode(t, Config{ReadHeaderTimeout: 200 * time.Millisecond}, true)
	addr := strings.TrimPrefix(n.url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a half-sent request open for 30s")
	}

	big, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	io.WriteString(big, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(big), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: got %d, want 431", resp.StatusCode)
	}
}

func TestHistoryEndpoint(t *testing.T) {
	reg := prometheus.NewRegistry()
	broker := pubsub.NewMemory(pubsub.MemoryConfig{HistorySize: 5})
	h, err := hub.New(hub.Config{NodeID: "n1", HistorySize: 5, Registerer: reg}, broker)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{APIKey: "k", MaxMessageBytes: 65536, Gatherer: reg, Ready: broker.Ready, Registerer: reg}, h)
	ts := httptest.NewServer(s)
	defer ts.Close()
	ctx := context.Background()
	for i := range 8 {
		if _, err := h.Publish(ctx, "r", fmt.Appendf(nil, `{"n":%d}`, i+1), ""); err != nil {
			t.Fatal(err)
		}
	}
	get := func(query, key string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", ts.URL+"/v1/history?"+query, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, body := get("room=r&since=5&limit=2", "k")
	if code != 200 || body["offset"] != 8.0 || body["epoch"] == "" {
		t.Fatalf("got %d %v, want 200 with offset 8 and an epoch", code, body)
	}
	msgs := body["messages"].([]any)
	if len(msgs) != 2 || msgs[0].(map[string]any)["offset"] != 6.0 || msgs[1].(map[string]any)["data"].(map[string]any)["n"] != 7.0 {
		t.Fatalf("got messages %v, want offsets 6 and 7", msgs)
	}
	if code, body := get("room=r", "k"); code != 200 || len(body["messages"].([]any)) != 5 {
		t.Fatalf("got %d %v, want the 5 kept (4..8)", code, body)
	}
	for _, tt := range []struct {
		query, key string
		want       int
	}{
		{"room=r", "", 401},
		{"room=r", "wrong", 401},
		{"room=a%20b", "k", 400},
		{"room=r&since=-1", "k", 400},
		{"room=r&limit=0", "k", 400},
	} {
		if code, _ := get(tt.query, tt.key); code != tt.want {
			t.Errorf("GET /v1/history?%s with key %q: got %d, want %d", tt.query, tt.key, code, tt.want)
		}
	}
	// History off: 404, said so.
	off, _ := hub.New(hub.Config{NodeID: "n2"}, pubsub.NewMemory(pubsub.MemoryConfig{}))
	ts2 := httptest.NewServer(New(Config{MaxMessageBytes: 65536, Gatherer: prometheus.NewRegistry()}, off))
	defer ts2.Close()
	resp, err := http.Get(ts2.URL + "/v1/history?room=r")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("history off: got %d, want 404", resp.StatusCode)
	}
}

// Every endpoint the server routes is in docs/protocol.md's endpoint table,
// and every documented endpoint is routed.
func TestProtocolDocListsEveryEndpoint(t *testing.T) {
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(b), "\n## HTTP endpoints\n")
	section, _, _ = strings.Cut(section, "\n## ")
	var documented []string
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| `") {
			cell := strings.Trim(strings.TrimSpace(strings.Split(line, "|")[1]), "`")
			path, _, _ := strings.Cut(cell, "?")
			documented = append(documented, path)
		}
	}
	var src []byte
	for _, name := range []string{"server.go", "presence.go"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, b...)
	}
	routed := regexp.MustCompile(`s\.mux\.Handle(?:Func)?\("([A-Z]+ /[^"]*)"`).FindAllStringSubmatch(string(src), -1)
	var routes []string
	for _, m := range routed {
		routes = append(routes, m[1])
	}
	for _, r := range routes {
		if !slices.Contains(documented, r) {
			t.Errorf("route %q is not in docs/protocol.md", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(routes, d) {
			t.Errorf("docs/protocol.md documents %q, which the server does not route", d)
		}
	}
}
