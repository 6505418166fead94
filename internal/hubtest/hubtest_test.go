package hubtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeTB records a failure and ends the goroutine, as FailNow does; the rest
// (Cleanup, Logf) goes to the real test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn with a TB that records its failure, and returns the failure
// message, empty when fn did not fail.
func failure(t *testing.T, fn func(tb testing.TB)) string {
	tb := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
	return tb.msg
}

func TestPollAndEventually(t *testing.T) {
	calls := 0
	if !Poll(time.Second, func() bool { calls++; return calls == 3 }) {
		t.Fatal("Poll: got false for a condition that became true")
	}
	if calls != 3 {
		t.Errorf("Poll: got %d calls, want 3", calls)
	}
	if Poll(20*time.Millisecond, func() bool { return false }) {
		t.Error("Poll: got true for a condition that never held")
	}
	if msg := failure(t, func(tb testing.TB) { Eventually(tb, time.Second, func() bool { return true }, "nothing") }); msg != "" {
		t.Errorf("Eventually of a true condition failed: %s", msg)
	}
	msg := failure(t, func(tb testing.TB) {
		Eventually(tb, 20*time.Millisecond, func() bool { return false }, "room %s to empty", "r")
	})
	if want := "waited 20ms for room r to empty"; msg != want {
		t.Errorf("Eventually that timed out: got failure %q, want %q", msg, want)
	}
}

func TestRedisServer(t *testing.T) {
	addr, stop, err := StartRedisServer("--maxclients", "100")
	if errors.Is(err, exec.ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := ping(addr); err != nil || pid <= 0 {
		t.Fatalf("PING %s: got pid %d, %v", addr, pid, err)
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("got address %s, want one on 127.0.0.1", addr)
	}
	stop()
	stop() // a second stop returns at once
	if _, err := ping(addr); err == nil {
		t.Error("redis-server still answers after stop")
	}
	if a := RedisServer(t); !pings(a) {
		t.Errorf("RedisServer: %s does not answer PING", a)
	}
}

func pings(addr string) bool {
	_, err := ping(addr)
	return err == nil
}

// A port another redis-server holds is not taken for ours.
func TestRedisServerRefusesAPortAnotherServerHolds(t *testing.T) {
	other := RedisServer(t)
	bin, _ := exec.LookPath("redis-server")
	_, port, _ := strings.Cut(other, ":")
	_, _, err := startRedisServer(bin, nil, port)
	if !errors.Is(err, errExited) {
		t.Fatalf("start on %s, held by another redis-server: got %v, want an error wrapping errExited", other, err)
	}
}

// wsServer serves each connection with handle, on loopback.
func wsServer(t *testing.T, handle func(ctx context.Context, c *websocket.Conn)) string {
	t.Helper()
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer c.CloseNow()
		handle(ctx, c)
	}))
	t.Cleanup(func() {
		cancel()
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// The server writes far more than any channel buffer before the client reads
// anything: every object arrives, in order, and the server never waits.
func TestClientQueuesEverythingInOrder(t *testing.T) {
	const objs = 5000
	written := make(chan struct{})
	url := wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		for i := 0; i < objs; i += 2 { // two objects per frame, and an empty line
			c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "{\"type\":\"message\",\"data\":%d}\n\n{\"type\":\"message\",\"data\":%d}", i, i+1))
		}
		close(written)
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			switch string(p) {
			case `{"type":"subscribe","room":"lobby","id":"sub-lobby"}`:
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"ack","id":"sub-lobby"}`))
			case "gap then message":
				c.Write(ctx, websocket.MessageText, []byte("{\"type\":\"gap\",\"room\":\"lobby\"}\n{\"type\":\"message\",\"data\":\"x\"}"))
			case "close":
				c.Close(4000, "slow consumer")
				return
			}
		}
	})
	c := Dial(t, url, nil)
	select {
	case <-written:
	case <-time.After(30 * time.Second):
		t.Fatal("the server could not write while the client was not reading")
	}
	for i := range objs {
		if m := c.Next(time.Second); m["data"] != float64(i) {
			t.Fatalf("object %d: got %v, want data %d", i, m, i)
		}
	}
	c.ExpectNothing(10 * time.Millisecond)
	c.Subscribe("lobby")
	c.Send("gap then message")
	if m := c.NextOfType("message", time.Second); m["data"] != "x" {
		t.Fatalf("NextOfType: got %v, want the message", m)
	}
	c.Send("close")
	if code, reason := c.CloseStatus(10 * time.Second); code != 4000 || reason != "slow consumer" {
		t.Fatalf("got close %d %q, want 4000 %q", code, reason, "slow consumer")
	}
}

func TestClientFailures(t *testing.T) {
	url := wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			switch string(p) {
			case "one":
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"message","data":1}`))
			case "not json":
				c.Write(ctx, websocket.MessageText, []byte("{\"type\":\"ack\"}\nnot json"))
			}
		}
	})
	tests := []struct {
		name string
		fn   func(tb testing.TB, c *Client)
		want string
	}{
		{"Next times out", func(tb testing.TB, c *Client) { c.Next(20 * time.Millisecond) }, "nothing received in 20ms"},
		{"ExpectNothing gets something", func(tb testing.TB, c *Client) {
			c.Send("one")
			c.ExpectNothing(10 * time.Second)
		}, "got map[data:1 type:message], want nothing"},
		{"Subscribe gets another object", func(tb testing.TB, c *Client) {
			c.Send("one")
			c.Subscribe("r")
		}, "subscribe r: got map[data:1 type:message], want its ack"},
		{"Next after the connection ended", func(tb testing.TB, c *Client) {
			c.CloseNow()
			c.Next(10 * time.Second)
		}, "connection ended while waiting for an object"},
		{"a line that is not JSON", func(tb testing.TB, c *Client) {
			c.Send("not json")
			c.Next(10 * time.Second) // the ack before it
			c.Next(10 * time.Second)
		}, "not a JSON object"},
		{"Closed times out", func(tb testing.TB, c *Client) { c.Closed(20 * time.Millisecond) }, "the connection did not end within 20ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := failure(t, func(tb testing.TB) { tt.fn(tb, Dial(tb, url, nil)) })
			if !strings.Contains(msg, tt.want) {
				t.Errorf("got failure %q, want one containing %q", msg, tt.want)
			}
		})
	}
}

// A client that never reads what floods in is torn down at once when the
// test ends (goleak checks its goroutine is gone).
func TestClientCleanupWithUnreadObjects(t *testing.T) {
	const objs = 5000
	written := make(chan struct{})
	url := wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		for i := range objs {
			if c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"message","data":%d}`, i)) != nil {
				return
			}
		}
		close(written)
		c.Read(ctx) // until the client goes
	})
	t.Run("unread", func(t *testing.T) {
		c := Dial(t, url, nil)
		<-written
		// Let the read loop take in everything (far past any channel buffer).
		Poll(2*time.Second, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return len(c.queue) == objs
		})
	})
}

func TestTryDialReturnsARefusedUpgradesStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c, resp, err := TryDial(t, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err == nil || c != nil {
		t.Fatal("TryDial of a refused upgrade: got a client, want an error")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("TryDial of a refused upgrade: got response %v, want 503", resp)
	}
}

// hubtest is test support: only tests and cmd/hubbench may import it.
func TestOnlyTestsImportHubtest(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	const self = "github.com/hubcluster/hubcluster/internal/hubtest"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/hubcluster/hubcluster/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		for imp := range strings.FieldsSeq(imports) {
			if imp == self && pkg != "github.com/hubcluster/hubcluster/cmd/hubbench" {
				t.Errorf("%s imports hubtest outside its tests", pkg)
			}
		}
	}
}
