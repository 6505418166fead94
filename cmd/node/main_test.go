package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
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

// startRun starts run on a free loopback port and returns its address, read
// from the start-up log line.
func startRun(t *testing.T, ctx context.Context, env []string) (string, chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"HUB_ADDR=127.0.0.1:0", "HUB_NODE_ID=t", "HUB_DRAIN_DELAY=0s"}, env...), pw)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "node started" {
			go io.Copy(io.Discard, pr)
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
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 202 {
		t.Fatalf("publish: got %v, %v; want 202", resp, err)
	}
	resp.Body.Close()
	for _, c := range conns {
		if _, p, err := c.Read(dialCtx); err != nil || string(p) != `{"type":"message","room":"demo","data":"hello"}` {
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
