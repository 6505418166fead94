package hub

import (
	"context"
	"fmt"
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/hubcluster/hubcluster/internal/auth"
	"github.com/hubcluster/hubcluster/internal/wire"
)

const testSecret = "0123456789abcdef0123456789abcdef"

func token(t *testing.T, ttl time.Duration, extra jwt.MapClaims) string {
	t.Helper()
	c := jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(ttl).Unix(),
		"subscribe": []string{"chat:*", "user:{sub}"}, "publish": []string{"chat:general"}}
	for k, v := range extra {
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authNode(t *testing.T, cfg Config) (*testNode, *hubtest.LogBuffer) {
	t.Helper()
	v, err := auth.New(auth.Config{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	logs := &hubtest.LogBuffer{}
	cfg.Authenticator = v
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	cfg.PingInterval = -1
	return newTestNode(t, cfg), logs
}

func TestAuthenticatedConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, logs := authNode(t, Config{})
		defer n.run()()
		tok := token(t, time.Hour, nil)
		c := n.dial()
		c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":"a"}`, tok))
		c.expect(map[string]any{"type": "ack", "id": "a"})
		for _, tt := range []struct{ frame, typ, code string }{
			{`{"type":"subscribe","room":"chat:1","id":1}`, "ack", ""},
			{`{"type":"subscribe","room":"user:u1","id":2}`, "ack", ""},
			{`{"type":"subscribe","room":"user:u2","id":3}`, "error", "forbidden"},
			{`{"type":"subscribe","room":"admin","id":4}`, "error", "forbidden"},
			{`{"type":"publish","room":"chat:random","data":1,"id":5}`, "error", "forbidden"},
		} {
			c.sendRaw(tt.frame)
			want := map[string]any{"type": tt.typ}
			if tt.code != "" {
				want["code"] = tt.code
			}
			c.expect(want)
		}
		c.sendRaw(`{"type":"subscribe","room":"chat:general","id":6}`)
		c.expect(map[string]any{"type": "ack"})
		c.sendRaw(`{"type":"publish","room":"chat:general","data":"hi","id":7}`)
		var pending []map[string]any
		checkObject(t, c.next(&pending), map[string]any{"type": "message", "data": "hi"})
		checkObject(t, c.next(&pending), map[string]any{"type": "ack", "id": 7})
		if strings.Contains(logs.String(), tok) {
			t.Error("the token appears in the logs")
		}
	})
}

func TestRejectedConnectionsClose1008(t *testing.T) {
	noneToken, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	tests := []struct {
		name  string
		first func(t *testing.T) string // the first frame
		why   string
	}{
		{"request before auth", func(*testing.T) string { return `{"type":"subscribe","room":"chat:1"}` }, "authenticate first"},
		{"expired token", func(t *testing.T) string {
			return fmt.Sprintf(`{"type":"auth","token":%q}`, token(t, -time.Minute, nil))
		}, "expired"},
		{"wrong signature", func(t *testing.T) string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(strings.Repeat("k", 32)))
			return fmt.Sprintf(`{"type":"auth","token":%q}`, s)
		}, "signature"},
		{"alg none", func(*testing.T) string { return fmt.Sprintf(`{"type":"auth","token":%q}`, noneToken) }, "signature"},
		{"missing token", func(*testing.T) string { return `{"type":"auth","id":1}` }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n, logs := authNode(t, Config{})
				defer n.run()()
				c := n.dial()
				first := tt.first(t)
				c.sendRaw(first)
				if tt.why == "" { // a malformed auth gets an error; the timeout still applies
					c.expect(map[string]any{"type": "error", "code": "bad_request"})
					c.expectClose(websocket.StatusPolicyViolation)
					return
				}
				ce := c.expectClose(websocket.StatusPolicyViolation)
				if !strings.Contains(ce.Reason, tt.why) {
					t.Errorf("got reason %q, want it to say %q", ce.Reason, tt.why)
				}
				if !strings.Contains(logs.String(), "ip=192.0.2.1") {
					t.Errorf("the rejection was not logged with the client IP: %s", logs)
				}
			})
		})
	}
}

func TestAuthTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, _ := authNode(t, Config{AuthTimeout: 3 * time.Second})
		defer n.run()()
		start := time.Now()
		c := n.dial()
		ce := c.expectClose(websocket.StatusPolicyViolation)
		if took := time.Since(start); took != 3*time.Second || !strings.Contains(ce.Reason, "timeout") {
			t.Errorf("got close %q after %v, want an authentication timeout after 3s", ce.Reason, took)
		}
	})
}

func TestTokenInQueryAndExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, logs := authNode(t, Config{})
		defer n.run()()
		tok := token(t, time.Minute, nil)
		conn, _, err := websocket.Dial(t.Context(), "ws://pipe/ws?token="+tok, &websocket.DialOptions{HTTPClient: n.client})
		if err != nil {
			t.Fatal(err)
		}
		c := &testClient{t: t, conn: conn}
		c.sendRaw(`{"type":"subscribe","room":"chat:1","id":1}`)
		c.expect(map[string]any{"type": "ack"})
		start := time.Now()
		ce := c.expectClose(websocket.StatusPolicyViolation)
		if took := time.Since(start); took > time.Minute || !strings.Contains(ce.Reason, "expired") {
			t.Errorf("got close %q after %v, want token expired within a minute", ce.Reason, took)
		}
		if strings.Contains(logs.String(), tok) {
			t.Error("the token appears in the logs")
		}
	})
}

func TestTokenRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, _ := authNode(t, Config{})
		defer n.run()()
		c := n.dial()
		c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":1}`, token(t, time.Minute, nil)))
		c.expect(map[string]any{"type": "ack"})
		time.Sleep(30 * time.Second)
		c.sendRaw(`{"type":"auth","token":"garbage","id":2}`)
		c.expect(map[string]any{"type": "error", "code": "forbidden", "id": 2})
		c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":3}`, token(t, time.Hour, nil)))
		c.expect(map[string]any{"type": "ack", "id": 3})
		time.Sleep(5 * time.Minute) // well past the first token's expiry
		c.sendRaw(`{"type":"subscribe","room":"chat:1","id":4}`)
		c.expect(map[string]any{"type": "ack", "id": 4})
	})
}

func TestRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{ClientRate: 10, ClientBurst: 5, PingInterval: -1})
		defer n.run()()
		c := n.dial()
		for i := range 5 {
			c.sendRaw(fmt.Sprintf(`{"type":"subscribe","room":"r","id":%d}`, i))
			c.expect(map[string]any{"type": "ack", "id": i})
		}
		c.sendRaw(`{"type":"subscribe","room":"r","id":5}`)
		c.expect(map[string]any{"type": "error", "code": "rate_limited", "id": 5})
		time.Sleep(time.Second) // the bucket refills
		c.sendRaw(`{"type":"subscribe","room":"r","id":6}`)
		c.expect(map[string]any{"type": "ack", "id": 6})
		// Persistently over: more than the burst rejected within 10s closes with 4001.
		var frame strings.Builder
		for i := range 30 {
			fmt.Fprintf(&frame, "{\"type\":\"subscribe\",\"room\":\"r\",\"id\":%d}\n", 100+i)
		}
		c.sendRaw(frame.String())
		c.expectClose(wire.StatusRateLimited)
		if got := counterValue(t, n.hub.metrics.rateLimited); got < 6 {
			t.Errorf("hub_rate_limited_total: got %v, want at least 6", got)
		}
	})
}

func TestRoomsPerClientLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{MaxRoomsPerClient: 3})
		defer n.run()()
		c := n.dial()
		for i := range 3 {
			c.sendRaw(fmt.Sprintf(`{"type":"subscribe","room":"r%d","id":%d}`, i, i))
			c.expect(map[string]any{"type": "ack"})
		}
		c.sendRaw(`{"type":"subscribe","room":"r9","id":9}`)
		c.expect(map[string]any{"type": "error", "code": "too_large", "id": 9})
		c.sendRaw(`{"type":"unsubscribe","room":"r0","id":10}`)
		c.expect(map[string]any{"type": "ack"})
		c.sendRaw(`{"type":"subscribe","room":"r9","id":11}`)
		c.expect(map[string]any{"type": "ack", "id": 11})
	})
}

// Regression (review defect 8): objects that fail to decode count against
// the same bucket as valid requests, and persisting closes with 4001.
func TestInvalidRequestsAreRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{ClientRate: 10, ClientBurst: 5, PingInterval: -1})
		defer n.run()()
		c := n.dial()
		for range 5 {
			c.sendRaw(`{"type":"dance","id":1}`)
			c.expect(map[string]any{"type": "error", "code": "bad_request"})
		}
		c.sendRaw(`not json at all`)
		c.expect(map[string]any{"type": "error", "code": "rate_limited"})
		var frame strings.Builder
		for range 30 {
			frame.WriteString("{\"room\":1}\n")
		}
		c.sendRaw(frame.String())
		c.expectClose(wire.StatusRateLimited)
	})
}

// Regression (review defect 8): pings count too; over the limit they are not
// answered, and a client that keeps pinging is closed with 4001.
func TestPingFloodIsLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newTestNode(t, Config{ClientRate: 10, ClientBurst: 5, PingInterval: -1})
		defer n.run()()
		c := n.dial()
		readErr := make(chan error, 1)
		go func() { // reading lets the client see pongs and the close
			for {
				if _, _, err := c.conn.Read(context.Background()); err != nil {
					readErr <- err
					return
				}
			}
		}()
		ctx := context.Background()
		for range 5 {
			if err := c.conn.Ping(ctx); err != nil {
				t.Fatalf("ping within the burst: %v", err)
			}
		}
		short, cancel := context.WithTimeout(ctx, time.Second)
		if err := c.conn.Ping(short); err == nil {
			t.Error("a ping over the rate limit was answered")
		}
		cancel()
		for range 10 {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
			c.conn.Ping(pctx)
			cancel()
		}
		if got := websocket.CloseStatus(<-readErr); got != wire.StatusRateLimited {
			t.Errorf("after a ping flood: got close %d, want 4001", got)
		}
	})
}

// Regression (review defect 6): a refreshed token that no longer grants a
// joined room takes the client out of it, with an unsubscribed message, and
// its messages stop.
func TestNarrowedTokenRefreshLeavesRooms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n, _ := authNode(t, Config{})
		defer n.run()()
		c := n.dial()
		c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":1}`, token(t, time.Hour, nil)))
		c.expect(map[string]any{"type": "ack", "id": 1})
		c.join("chat:a")
		c.join("chat:b")
		narrow := token(t, time.Hour, jwt.MapClaims{"subscribe": []string{"chat:a"}})
		c.sendRaw(fmt.Sprintf(`{"type":"auth","token":%q,"id":2}`, narrow))
		var pending []map[string]any
		checkObject(t, c.next(&pending), map[string]any{"type": "unsubscribed", "room": "chat:b", "code": "forbidden"})
		checkObject(t, c.next(&pending), map[string]any{"type": "ack", "id": 2})
		for _, room := range []string{"chat:b", "chat:a"} {
			if _, err := n.hub.Publish(context.Background(), room, []byte(`"`+room+`"`), ""); err != nil {
				t.Fatal(err)
			}
		}
		checkObject(t, c.next(&pending), map[string]any{"type": "message", "room": "chat:a"})
		c.sendRaw(`{"type":"subscribe","room":"chat:b","id":3}`)
		checkObject(t, c.next(&pending), map[string]any{"type": "error", "code": "forbidden", "id": 3})
	})
}
