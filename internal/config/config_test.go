package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	c, err := Load(nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Addr != ":8080" || c.MaxMessageBytes != 65536 || c.SendQueue != 256 || c.DrainTimeout != 25*time.Second ||
		c.LogLevel != "info" || c.LogFormat != "json" || c.RedisURL != "" || c.RedisPrefix != "hub:" || c.NodeID == "" {
		t.Errorf("got %+v, want the DESIGN.md defaults", c)
	}
	if c.ProbeInterval != time.Second || c.ClientRate != 100 || c.PingInterval != 25*time.Second ||
		c.HTTPReadTimeout != 10*time.Second || c.MaxHTTPConns != 1024 || c.MaxHTTPConnsPerIP != 256 {
		t.Errorf("got %+v, want the README defaults", c)
	}
}

func TestValues(t *testing.T) {
	c, err := Load([]string{
		"HUB_ADDR=127.0.0.1:9000", "HUB_REDIS_URL=rediss://u:secret@127.0.0.1:6380/0", "HUB_NODE_ID=n1",
		"HUB_ALLOWED_ORIGINS=example.com,*.example.org", "HUB_MAX_MESSAGE_BYTES=1024", "HUB_SEND_QUEUE=8",
		"HUB_DRAIN_TIMEOUT=3s", "HUB_DRAIN_DELAY=1s", "HUB_API_KEY=k", "HUB_LOG_LEVEL=debug", "HUB_LOG_FORMAT=text", "UNRELATED=x",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Addr != "127.0.0.1:9000" || c.NodeID != "n1" || len(c.AllowedOrigins) != 2 || c.MaxMessageBytes != 1024 ||
		c.SendQueue != 8 || c.DrainTimeout != 3*time.Second || c.APIKey != "k" || c.LogFormat != "text" {
		t.Errorf("got %+v", c)
	}
	if got := c.RedactedRedisURL(); strings.Contains(got, "secret") {
		t.Errorf("RedactedRedisURL: got %q, which holds the password", got)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	tests := []struct{ env, wantVar string }{
		{"HUB_MAX_MESSAGE_BYTES=abc", "HUB_MAX_MESSAGE_BYTES"},
		{"HUB_MAX_MESSAGE_BYTES=10", "HUB_MAX_MESSAGE_BYTES"},
		{"HUB_ADDR=nonsense", "HUB_ADDR"},
		{"HUB_ADDR=:99999", "HUB_ADDR"},
		{"HUB_SEND_QUEUE=-1", "HUB_SEND_QUEUE"},
		{"HUB_SEND_QUEUE=lots", "HUB_SEND_QUEUE"},
		{"HUB_DRAIN_TIMEOUT=soon", "HUB_DRAIN_TIMEOUT"},
		{"HUB_DRAIN_TIMEOUT=0s", "HUB_DRAIN_TIMEOUT"},
		{"HUB_DRAIN_TIMEOUT=4s", "HUB_DRAIN_DELAY"}, // the default 5s delay would not fit
		{"HUB_RECONNECT_WINDOW=0s", "HUB_RECONNECT_WINDOW"},
		{"HUB_LOG_LEVEL=loud", "HUB_LOG_LEVEL"},
		{"HUB_LOG_FORMAT=xml", "HUB_LOG_FORMAT"},
		{"HUB_REDIS_URL=http://127.0.0.1", "HUB_REDIS_URL"},
		{"HUB_PING_INTERVAL=-1s", "HUB_PING_INTERVAL"},
		{"HUB_ALLOWED_ORIGINS=a,,b", "HUB_ALLOWED_ORIGINS"},
		{"HUB_ALLOWED_ORIGINS=app.example.com,[", "HUB_ALLOWED_ORIGINS"},
		{"HUB_JWT_SECRET=short", "HUB_JWT_SECRET"},
		{"HUB_CLIENT_RATE=fast", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_BURST=0", "HUB_CLIENT_BURST"},
		{"HUB_MAX_ROOMS_PER_CLIENT=0", "HUB_MAX_ROOMS_PER_CLIENT"},
		{"HUB_MAX_CONNECTIONS=-5", "HUB_MAX_CONNECTIONS"},
		{"HUB_MAX_CONNECTIONS_PER_IP=x", "HUB_MAX_CONNECTIONS_PER_IP"},
		{"HUB_TRUSTED_PROXIES=10.0.0.0/8,bogus", "HUB_TRUSTED_PROXIES"},
		{"HUB_AUTH_TIMEOUT=0s", "HUB_AUTH_TIMEOUT"},
		// Values that parse but start a broken node.
		{"HUB_CLIENT_RATE=NaN", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_RATE=Inf", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_RATE=+Inf", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_RATE=-Inf", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_RATE=1e300", "HUB_CLIENT_RATE"},
		{"HUB_CLIENT_BURST=2000000000", "HUB_CLIENT_BURST"},
		{"HUB_REDIS_PROBE_INTERVAL=1ns", "HUB_REDIS_PROBE_INTERVAL"},
		{"HUB_REDIS_PROBE_INTERVAL=99ms", "HUB_REDIS_PROBE_INTERVAL"},
		{"HUB_REDIS_PROBE_TIMEOUT=1h", "HUB_REDIS_PROBE_TIMEOUT"},
		{"HUB_PING_INTERVAL=1ns", "HUB_PING_INTERVAL"},
		{"HUB_WRITE_TIMEOUT=1ns", "HUB_WRITE_TIMEOUT"},
		{"HUB_AUTH_TIMEOUT=1ns", "HUB_AUTH_TIMEOUT"},
		{"HUB_SLOW_CONSUMER_TIMEOUT=1ns", "HUB_SLOW_CONSUMER_TIMEOUT"},
		{"HUB_RECONNECT_WINDOW=1000h", "HUB_RECONNECT_WINDOW"},
		{"HUB_DRAIN_TIMEOUT=1000h", "HUB_DRAIN_TIMEOUT"},
		{"HUB_SEND_QUEUE_BYTES=65536", "HUB_SEND_QUEUE_BYTES"}, // one largest message would cut its receivers
		{"HUB_MAX_ROOMS_PER_CLIENT=10000000", "HUB_MAX_ROOMS_PER_CLIENT"},
		{"HUB_REDIS_PREFIX=a b", "HUB_REDIS_PREFIX"},
		{"HUB_HTTP_READ_TIMEOUT=1ns", "HUB_HTTP_READ_TIMEOUT"},
		{"HUB_HTTP_READ_TIMEOUT=soon", "HUB_HTTP_READ_TIMEOUT"},
		{"HUB_MAX_HTTP_CONNECTIONS=-1", "HUB_MAX_HTTP_CONNECTIONS"},
		{"HUB_MAX_HTTP_CONNECTIONS_PER_IP=-1", "HUB_MAX_HTTP_CONNECTIONS_PER_IP"},
		{"HUB_MAX_HTTP_CONNECTIONS_PER_IP=2000", "HUB_MAX_HTTP_CONNECTIONS_PER_IP"}, // more than the node's 1024
		// Set but empty, where empty is not a value: the default would be
		// taken silently (an empty HUB_ADDR listened on every interface).
		{"HUB_ADDR=", "HUB_ADDR"},
		{"HUB_LOG_LEVEL=", "HUB_LOG_LEVEL"},
		{"HUB_SEND_QUEUE=", "HUB_SEND_QUEUE"},
		{"HUB_DRAIN_TIMEOUT=", "HUB_DRAIN_TIMEOUT"},
		{"HUB_CLIENT_RATE=", "HUB_CLIENT_RATE"},
		{"HUB_REDIS_PREFIX=", "HUB_REDIS_PREFIX"},
	}
	for _, tt := range tests {
		_, err := Load([]string{tt.env})
		if err == nil {
			t.Errorf("Load(%s): got nil error", tt.env)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantVar) {
			t.Errorf("Load(%s): got %q, want it to name %s", tt.env, err, tt.wantVar)
		}
	}
}

// Settings whose default is empty take an empty value as that default: the
// compose file passes HUB_API_KEY=${HUB_API_KEY:-}.
func TestEmptyMeansDefaultWhereTheDefaultIsEmpty(t *testing.T) {
	for _, e := range []string{"HUB_API_KEY=", "HUB_JWT_SECRET=", "HUB_JWT_PUBLIC_KEY_FILE=", "HUB_REDIS_URL=",
		"HUB_ALLOWED_ORIGINS=", "HUB_TRUSTED_PROXIES=", "HUB_NODE_ID=", "HUB_JWT_AUDIENCE=", "HUB_JWT_ISSUER="} {
		if _, err := Load([]string{e}); err != nil {
			t.Errorf("Load(%s): got %v, want nil", e, err)
		}
	}
}

func TestUnknown(t *testing.T) {
	got := Unknown([]string{
		"HUB_MAX_CONECTIONS=10", "HUB_ADDR=:1", "HUB_TEST_REDIS_IMAGE=x", "HUB_TEST_INTEGRATION=1",
		"HUB_LB_BIND=127.0.0.1", "HUB_LB_PORT=8080", "PATH=/bin", "HUB_adr=x", "HUB_ZZZ", "HUB_API_KEY=",
	})
	want := []string{"HUB_MAX_CONECTIONS", "HUB_ZZZ", "HUB_adr"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := Unknown(nil); len(got) != 0 {
		t.Errorf("no environment: got %v, want none", got)
	}
}

// "a.example, b.example" means two patterns, not one with a space in front
// that no origin matches.
func TestAllowedOriginsAreTrimmed(t *testing.T) {
	c, err := Load([]string{"HUB_ALLOWED_ORIGINS=example.com, *.example.org ,https://app.example.net"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"example.com", "*.example.org", "https://app.example.net"}; !slices.Equal(c.AllowedOrigins, want) {
		t.Errorf("got %q, want %q", c.AllowedOrigins, want)
	}
}

func TestTrustedProxies(t *testing.T) {
	c, err := Load([]string{"HUB_TRUSTED_PROXIES=10.0.0.0/8, 192.168.1.7 ,fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := c.TrustedProxies()
	if len(got) != 3 || got[1].String() != "192.168.1.7/32" {
		t.Errorf("got %v", got)
	}
}

func TestRedisPasswordNeverInErrors(t *testing.T) {
	_, err := Load([]string{"HUB_REDIS_URL=http://u:hunter2@127.0.0.1"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("got %v, want an error without the password", err)
	}
}

// The demo page is off unless HUB_DEMO turns it on.
func TestDemo(t *testing.T) {
	tests := []struct {
		env  []string
		want bool
	}{
		{nil, false},
		{[]string{"HUB_DEMO=true"}, true},
		{[]string{"HUB_DEMO=false"}, false},
	}
	for _, tt := range tests {
		c, err := Load(tt.env)
		if err != nil || c.Demo != tt.want {
			t.Errorf("Load(%v): got Demo %v (%v), want %v", tt.env, c.Demo, err, tt.want)
		}
	}
	if _, err := Load([]string{"HUB_DEMO=yes please"}); err == nil || !strings.Contains(err.Error(), "HUB_DEMO") {
		t.Errorf("HUB_DEMO=yes please: got %v, want an error naming HUB_DEMO", err)
	}
}

func TestRedisModes(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{nil, RedisNone},
		{[]string{"HUB_REDIS_URL=redis://127.0.0.1:6379"}, RedisStandalone},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1:7001, 127.0.0.1:7002"}, RedisCluster},
		{[]string{"HUB_REDIS_SENTINELS=10.0.0.1:26379,10.0.0.2:26379", "HUB_REDIS_SENTINEL_MASTER=mymaster",
			"HUB_REDIS_USERNAME=hub", "HUB_REDIS_PASSWORD=pw", "HUB_REDIS_TLS=true"}, RedisSentinel},
	}
	for _, tt := range tests {
		c, err := Load(tt.env)
		if err != nil {
			t.Errorf("Load(%q): %v", tt.env, err)
			continue
		}
		if got := c.RedisMode(); got != tt.want {
			t.Errorf("Load(%q): got mode %q, want %q", tt.env, got, tt.want)
		}
	}
	c, err := Load([]string{"HUB_REDIS_CLUSTER= 127.0.0.1:7001 ,redis-2:7002"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.1:7001", "redis-2:7002"}; !slices.Equal(c.RedisCluster, want) {
		t.Errorf("HUB_REDIS_CLUSTER: got %q, want %q", c.RedisCluster, want)
	}
}

// More than one Redis deployment, a bad address list, a sentinel list
// without its primary's name, or credentials without a mode that takes them:
// each error names the variables at fault, and never shows the password.
func TestRedisModeErrorsNameTheVariables(t *testing.T) {
	tests := []struct {
		env  []string
		want []string
	}{
		{[]string{"HUB_REDIS_URL=redis://127.0.0.1:6379", "HUB_REDIS_CLUSTER=127.0.0.1:7001"}, []string{"HUB_REDIS_URL", "HUB_REDIS_CLUSTER"}},
		{[]string{"HUB_REDIS_URL=redis://127.0.0.1:6379", "HUB_REDIS_SENTINELS=127.0.0.1:26379", "HUB_REDIS_SENTINEL_MASTER=m"},
			[]string{"HUB_REDIS_URL", "HUB_REDIS_SENTINELS"}},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1:7001", "HUB_REDIS_SENTINELS=127.0.0.1:26379", "HUB_REDIS_SENTINEL_MASTER=m"},
			[]string{"HUB_REDIS_CLUSTER", "HUB_REDIS_SENTINELS"}},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1:7001", "HUB_REDIS_SENTINEL_MASTER=m"}, []string{"HUB_REDIS_CLUSTER", "HUB_REDIS_SENTINELS"}},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1:7001,,127.0.0.1:7002"}, []string{"HUB_REDIS_CLUSTER"}},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1"}, []string{"HUB_REDIS_CLUSTER"}},
		{[]string{"HUB_REDIS_CLUSTER=127.0.0.1:0"}, []string{"HUB_REDIS_CLUSTER"}},
		{[]string{"HUB_REDIS_CLUSTER=redis://127.0.0.1:7001"}, []string{"HUB_REDIS_CLUSTER"}},
		{[]string{"HUB_REDIS_SENTINELS=127.0.0.1:26379"}, []string{"HUB_REDIS_SENTINEL_MASTER"}},
		{[]string{"HUB_REDIS_SENTINEL_MASTER=mymaster"}, []string{"HUB_REDIS_SENTINELS"}},
		{[]string{"HUB_REDIS_SENTINELS=127.0.0.1:26379,:1", "HUB_REDIS_SENTINEL_MASTER=m"}, []string{"HUB_REDIS_SENTINELS"}},
		{[]string{"HUB_REDIS_SENTINELS=127.0.0.1:26379", "HUB_REDIS_SENTINEL_MASTER=my master"}, []string{"HUB_REDIS_SENTINEL_MASTER"}},
		{[]string{"HUB_REDIS_PASSWORD=hunter2"}, []string{"HUB_REDIS_PASSWORD"}},
		{[]string{"HUB_REDIS_USERNAME=hub"}, []string{"HUB_REDIS_USERNAME"}},
		{[]string{"HUB_REDIS_TLS=true"}, []string{"HUB_REDIS_TLS"}},
		{[]string{"HUB_REDIS_TLS=maybe", "HUB_REDIS_CLUSTER=127.0.0.1:7001"}, []string{"HUB_REDIS_TLS"}},
		{[]string{"HUB_REDIS_TLS=", "HUB_REDIS_CLUSTER=127.0.0.1:7001"}, []string{"HUB_REDIS_TLS"}},
		{[]string{"HUB_REDIS_URL=redis://127.0.0.1:6379", "HUB_REDIS_PASSWORD=hunter2"}, []string{"HUB_REDIS_PASSWORD", "HUB_REDIS_URL"}},
	}
	for _, tt := range tests {
		_, err := Load(tt.env)
		if err == nil {
			t.Errorf("Load(%q): got nil error", tt.env)
			continue
		}
		for _, name := range tt.want {
			if !strings.Contains(err.Error(), name) {
				t.Errorf("Load(%q): got %q, want it to name %s", tt.env, err, name)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Load(%q): got %q, which shows the password", tt.env, err)
		}
	}
}
