package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/internal/hubtest"
)

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"direct", "203.0.113.5:1234", nil, "203.0.113.5"},
		{"forged header from an untrusted peer", "203.0.113.5:1234", []string{"1.2.3.4"}, "203.0.113.5"},
		{"trusted proxy", "10.0.0.2:80", []string{"198.51.100.7"}, "198.51.100.7"},
		{"rightmost untrusted wins", "10.0.0.2:80", []string{"6.6.6.6, 198.51.100.7, 10.0.0.9"}, "198.51.100.7"},
		{"several headers", "10.0.0.2:80", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},
		{"only proxies", "10.0.0.2:80", []string{"10.0.0.3"}, "10.0.0.3"},
		{"no header behind a proxy", "10.0.0.2:80", nil, "10.0.0.2"},
		{"garbled hop", "10.0.0.2:80", []string{"198.51.100.7, nonsense"}, "10.0.0.2"},
		{"ipv6", "[2001:db8::1]:443", nil, "2001:db8::1"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = tt.peer
		for _, h := range tt.xff {
			r.Header.Add("X-Forwarded-For", h)
		}
		if got := clientIP(r, trusted).String(); got != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got, tt.want)
		}
	}
}

func dialWith(t *testing.T, n *node, xff string) (int, *websocket.Conn) {
	t.Helper()
	h := http.Header{}
	if xff != "" {
		h.Set("X-Forwarded-For", xff)
	}
	c, resp, err := websocket.Dial(context.Background(), wsURL(n), &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
		return resp.StatusCode, c
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode, nil
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per node", func(t *testing.T) {
		n := startNode(t, Config{MaxConnections: 2}, true)
		for i, want := range []int{101, 101, 503} {
			if got, _ := dialWith(t, n, ""); got != want {
				t.Fatalf("connection %d: got HTTP %d, want %d", i+1, got, want)
			}
		}
	})
	t.Run("per IP, untrusted peer", func(t *testing.T) {
		n := startNode(t, Config{MaxConnectionsPerIP: 1}, true)
		if got, _ := dialWith(t, n, "198.51.100.1"); got != 101 {
			t.Fatalf("first: got %d, want 101", got)
		}
		// A forged X-Forwarded-For changes nothing: the peer is the client.
		if got, _ := dialWith(t, n, "198.51.100.2"); got != 429 {
			t.Fatalf("second, forged header: got %d, want 429", got)
		}
	})
	t.Run("per IP, behind a trusted proxy", func(t *testing.T) {
		n := startNode(t, Config{MaxConnectionsPerIP: 1, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, true)
		_, first := dialWith(t, n, "198.51.100.1")
		if first == nil {
			t.Fatal("first: refused")
		}
		if got, _ := dialWith(t, n, "198.51.100.2"); got != 101 {
			t.Fatalf("another client behind the proxy: got %d, want 101", got)
		}
		if got, _ := dialWith(t, n, "198.51.100.1"); got != 429 {
			t.Fatalf("same client again: got %d, want 429", got)
		}
		first.Close(websocket.StatusNormalClosure, "")
		// Its slot comes back once its connection is gone.
		hubtest.Eventually(t, 10*time.Second, func() bool {
			got, _ := dialWith(t, n, "198.51.100.1")
			return got == 101
		}, "the slot of a closed connection to come back")
	})
}

// A flood of refused upgrades writes one log line, not one per refusal (the
// summary of the rest comes when the interval ends).
func TestRefusalLogsAreThrottled(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		hold   bool // keep one WebSocket open first
		origin string
		plain  bool // a GET /ws that is not an upgrade
		want   int
	}{
		{name: "node at HUB_MAX_CONNECTIONS", cfg: Config{MaxConnections: 1}, hold: true, want: 503},
		{name: "IP at HUB_MAX_CONNECTIONS_PER_IP", cfg: Config{MaxConnectionsPerIP: 1}, hold: true, want: 429},
		{name: "foreign origin", origin: "http://evil.example.net", want: 403},
		{name: "not an upgrade", plain: true, want: 426},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs hubtest.LogBuffer
			tt.cfg.Logger = logs.Logger()
			n := startNode(t, tt.cfg, true)
			if tt.hold {
				if got, _ := dialWith(t, n, ""); got != 101 {
					t.Fatalf("first connection: got %d, want 101", got)
				}
			}
			for i := range 20 {
				var got int
				if tt.plain {
					resp, err := http.Get(n.url + "/ws")
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					got = resp.StatusCode
				} else {
					h := http.Header{}
					if tt.origin != "" {
						h.Set("Origin", tt.origin)
					}
					c, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(n.url, "http")+"/ws", &websocket.DialOptions{HTTPHeader: h})
					if err == nil {
						c.CloseNow()
					}
					if resp != nil {
						got = resp.StatusCode
					}
				}
				if got != tt.want {
					t.Fatalf("attempt %d: got HTTP %d, want %d", i, got, tt.want)
				}
			}
			if got := logs.Lines(t, "upgrade refused"); len(got) != 1 {
				t.Errorf("got %d log lines for 20 refusals, want 1: %v", len(got), got)
			}
		})
	}
}
