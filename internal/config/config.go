// Package config reads a node's settings from the environment.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/caarlos0/env/v11"
)

// Config is every HUB_ setting. The README lists them all.
type Config struct {
	Addr              string        `env:"HUB_ADDR" envDefault:":8080"`
	RedisURL          string        `env:"HUB_REDIS_URL"`
	RedisCluster      []string      `env:"HUB_REDIS_CLUSTER" envSeparator:","`
	RedisSentinels    []string      `env:"HUB_REDIS_SENTINELS" envSeparator:","`
	RedisMaster       string        `env:"HUB_REDIS_SENTINEL_MASTER"`
	RedisUsername     string        `env:"HUB_REDIS_USERNAME"`
	RedisPassword     string        `env:"HUB_REDIS_PASSWORD"`
	RedisTLS          bool          `env:"HUB_REDIS_TLS" envDefault:"false"`
	RedisPrefix       string        `env:"HUB_REDIS_PREFIX" envDefault:"hub:"`
	ProbeInterval     time.Duration `env:"HUB_REDIS_PROBE_INTERVAL" envDefault:"1s"`
	ProbeTimeout      time.Duration `env:"HUB_REDIS_PROBE_TIMEOUT" envDefault:"3s"`
	NodeID            string        `env:"HUB_NODE_ID"`
	AllowedOrigins    []string      `env:"HUB_ALLOWED_ORIGINS" envSeparator:","`
	MaxMessageBytes   int64         `env:"HUB_MAX_MESSAGE_BYTES" envDefault:"65536"`
	SendQueue         int           `env:"HUB_SEND_QUEUE" envDefault:"256"`
	SlowTimeout       time.Duration `env:"HUB_SLOW_CONSUMER_TIMEOUT" envDefault:"5s"`
	SendQueueBytes    int           `env:"HUB_SEND_QUEUE_BYTES" envDefault:"1048576"`
	HistorySize       int           `env:"HUB_HISTORY_SIZE" envDefault:"100"`
	HistoryTTL        time.Duration `env:"HUB_HISTORY_TTL" envDefault:"5m"`
	PresenceLimit     int           `env:"HUB_PRESENCE_LIMIT" envDefault:"1000"`
	NodeTimeout       time.Duration `env:"HUB_NODE_TIMEOUT" envDefault:"5s"`
	BrokerTimeout     time.Duration `env:"HUB_BROKER_TIMEOUT" envDefault:"5s"`
	DrainTimeout      time.Duration `env:"HUB_DRAIN_TIMEOUT" envDefault:"25s"`
	DrainDelay        time.Duration `env:"HUB_DRAIN_DELAY" envDefault:"5s"`
	ReconnectWindow   time.Duration `env:"HUB_RECONNECT_WINDOW" envDefault:"5s"`
	APIKey            string        `env:"HUB_API_KEY"`
	LogLevel          string        `env:"HUB_LOG_LEVEL" envDefault:"info"`
	LogFormat         string        `env:"HUB_LOG_FORMAT" envDefault:"json"`
	WriteTimeout      time.Duration `env:"HUB_WRITE_TIMEOUT" envDefault:"10s"`
	WriteCoalesceSpec string        `env:"HUB_WRITE_COALESCE" envDefault:"auto"`

	JWTSecret        string        `env:"HUB_JWT_SECRET"`
	JWTPublicKeyFile string        `env:"HUB_JWT_PUBLIC_KEY_FILE"`
	JWTAudience      string        `env:"HUB_JWT_AUDIENCE"`
	JWTIssuer        string        `env:"HUB_JWT_ISSUER"`
	AuthTimeout      time.Duration `env:"HUB_AUTH_TIMEOUT" envDefault:"10s"`
	ClientRate       float64       `env:"HUB_CLIENT_RATE" envDefault:"100"`
	ClientBurst      int           `env:"HUB_CLIENT_BURST" envDefault:"200"`
	MaxRooms         int           `env:"HUB_MAX_ROOMS_PER_CLIENT" envDefault:"128"`
	MaxConns         int           `env:"HUB_MAX_CONNECTIONS" envDefault:"0"`
	MaxConnsPerIP    int           `env:"HUB_MAX_CONNECTIONS_PER_IP" envDefault:"0"`
	TrustedProxyList []string      `env:"HUB_TRUSTED_PROXIES" envSeparator:","`
	PingInterval     time.Duration `env:"HUB_PING_INTERVAL" envDefault:"25s"`

	HTTPReadTimeout   time.Duration `env:"HUB_HTTP_READ_TIMEOUT" envDefault:"10s"`
	MaxHTTPConns      int           `env:"HUB_MAX_HTTP_CONNECTIONS" envDefault:"1024"`
	MaxHTTPConnsPerIP int           `env:"HUB_MAX_HTTP_CONNECTIONS_PER_IP" envDefault:"256"`

	Demo bool `env:"HUB_DEMO" envDefault:"false"`
}

// setting is one HUB_ variable of Config, read from its struct tags.
type setting struct {
	name   string
	def    string
	hasDef bool
}

// settings lists Config's variables.
var settings = sync.OnceValue(func() []setting {
	var out []setting
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name == "" {
			continue
		}
		def, hasDef := f.Tag.Lookup("envDefault")
		out = append(out, setting{name: name, def: def, hasDef: hasDef})
	}
	return out
})

// notSettings are HUB_ variables that are not the node's, and not typos:
// the test harness's (HUB_TEST_*) and the compose file's.
var notSettings = []string{"HUB_LB_BIND", "HUB_LB_PORT"}

// Unknown returns, sorted, the HUB_ variables in environ that no setting
// reads, such as the typo HUB_MAX_CONECTIONS, which would otherwise be
// ignored without a word.
func Unknown(environ []string) []string {
	known := make(map[string]bool, len(settings()))
	for _, s := range settings() {
		known[s.name] = true
	}
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "HUB_") || known[k] || strings.HasPrefix(k, "HUB_TEST_") || slices.Contains(notSettings, k) {
			continue
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Load parses environ ("KEY=value" pairs, as os.Environ gives) into a Config.
// An error names the variable at fault.
func Load(environ []string) (Config, error) {
	vars := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	// env takes a variable that is set but empty as its default, so an
	// HUB_ADDR= meant to hold an address listens on every interface. Where
	// the default is not empty, empty is not a value.
	var errs []error
	for _, s := range settings() {
		if v, ok := vars[s.name]; ok && v == "" && s.def != "" {
			errs = append(errs, fmt.Errorf("config: %s: set but empty; unset it for the default (%s)", s.name, s.def))
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	var c Config
	if err := env.ParseWithOptions(&c, env.Options{Environment: vars}); err != nil {
		return Config{}, nameVariables(err)
	}
	for i, o := range c.AllowedOrigins {
		c.AllowedOrigins[i] = strings.TrimSpace(o)
	}
	for _, list := range [][]string{c.RedisCluster, c.RedisSentinels} {
		for i, a := range list {
			list[i] = strings.TrimSpace(a)
		}
	}
	if c.NodeID == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "node"
		}
		c.NodeID = h
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", name, fmt.Sprintf(format, args...)))
	}
	if _, port, err := net.SplitHostPort(c.Addr); err != nil {
		bad("HUB_ADDR", "%q is not a host:port listen address (e.g. :8080 or 127.0.0.1:8080)", c.Addr)
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		bad("HUB_ADDR", "%q has no valid port number", c.Addr)
	}
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			bad("HUB_REDIS_URL", "want redis://host:port or rediss://host:port")
		}
	}
	c.validateRedisMode(bad)
	if c.RedisPrefix == "" || len(c.RedisPrefix) > 64 || strings.ContainsFunc(c.RedisPrefix, unicode.IsSpace) ||
		strings.ContainsFunc(c.RedisPrefix, unicode.IsControl) {
		bad("HUB_REDIS_PREFIX", "must be 1 to 64 characters without spaces or control characters")
	}
	if strings.ContainsAny(c.NodeID, "\n\r") || len(c.NodeID) > 255 {
		bad("HUB_NODE_ID", "must be at most 255 characters on one line")
	}
	if c.ProbeInterval < 100*time.Millisecond || c.ProbeInterval > time.Minute {
		bad("HUB_REDIS_PROBE_INTERVAL", "must be between 100ms and 1m, e.g. 1s")
	}
	if c.ProbeTimeout <= c.ProbeInterval || c.ProbeTimeout > 5*time.Minute {
		bad("HUB_REDIS_PROBE_TIMEOUT", "must be longer than HUB_REDIS_PROBE_INTERVAL, and at most 5m")
	}
	if c.MaxMessageBytes < 128 || c.MaxMessageBytes > 64<<20 {
		bad("HUB_MAX_MESSAGE_BYTES", "%d is outside 128..67108864", c.MaxMessageBytes)
	}
	if c.SendQueue < 1 || c.SendQueue > 1<<20 {
		bad("HUB_SEND_QUEUE", "%d is outside 1..1048576", c.SendQueue)
	}
	if c.SlowTimeout < 10*time.Millisecond || c.SlowTimeout > 10*time.Minute {
		bad("HUB_SLOW_CONSUMER_TIMEOUT", "must be between 10ms and 10m, e.g. 5s")
	}
	if c.SendQueueBytes < 64<<10 || c.SendQueueBytes > 1<<30 {
		bad("HUB_SEND_QUEUE_BYTES", "%d is outside 65536..1073741824", c.SendQueueBytes)
	} else if int64(c.SendQueueBytes) < 2*c.MaxMessageBytes {
		bad("HUB_SEND_QUEUE_BYTES", "%d is less than twice HUB_MAX_MESSAGE_BYTES (%d): one largest message would cut its receivers",
			c.SendQueueBytes, c.MaxMessageBytes)
	}
	if c.HistorySize < 0 || c.HistorySize > 100000 {
		bad("HUB_HISTORY_SIZE", "%d is outside 0 (off)..100000", c.HistorySize)
	}
	if c.PresenceLimit < 1 || c.PresenceLimit > 100000 {
		bad("HUB_PRESENCE_LIMIT", "%d is outside 1..100000", c.PresenceLimit)
	}
	if c.NodeTimeout < 2*time.Second || c.NodeTimeout > 10*time.Minute {
		bad("HUB_NODE_TIMEOUT", "must be between 2s and 10m, e.g. 5s")
	}
	if c.HistoryTTL < time.Second || c.HistoryTTL > 30*24*time.Hour {
		bad("HUB_HISTORY_TTL", "must be between 1s and 720h, e.g. 5m")
	}
	if c.BrokerTimeout < 10*time.Millisecond || c.BrokerTimeout > time.Minute {
		bad("HUB_BROKER_TIMEOUT", "must be between 10ms and 1m, e.g. 5s")
	}
	if strings.ContainsAny(c.RedisPrefix, "{}") {
		bad("HUB_REDIS_PREFIX", "must not contain '{' or '}' (a room's keys share the hash tag {prefix room})")
	}
	if c.DrainTimeout < 100*time.Millisecond || c.DrainTimeout > time.Hour {
		bad("HUB_DRAIN_TIMEOUT", "must be between 100ms and 1h, e.g. 25s")
	}
	if c.DrainDelay < 0 || c.DrainDelay >= c.DrainTimeout {
		bad("HUB_DRAIN_DELAY", "must be 0 or more, and shorter than HUB_DRAIN_TIMEOUT")
	}
	if c.ReconnectWindow <= 0 || c.ReconnectWindow > 10*time.Minute {
		bad("HUB_RECONNECT_WINDOW", "must be positive and at most 10m, e.g. 5s")
	}
	if c.WriteTimeout < 100*time.Millisecond || c.WriteTimeout > 10*time.Minute {
		bad("HUB_WRITE_TIMEOUT", "must be between 100ms and 10m, e.g. 10s")
	}
	if _, err := c.WriteCoalesce(); err != nil {
		bad("HUB_WRITE_COALESCE", "%v", err)
	}
	if c.PingInterval != 0 && (c.PingInterval < 100*time.Millisecond || c.PingInterval > time.Hour) {
		bad("HUB_PING_INTERVAL", "must be 0 (off) or between 100ms and 1h, e.g. 25s")
	}
	if _, err := c.Level(); err != nil {
		bad("HUB_LOG_LEVEL", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		bad("HUB_LOG_FORMAT", "%q is not json or text", c.LogFormat)
	}
	if c.JWTSecret != "" && c.JWTPublicKeyFile != "" {
		bad("HUB_JWT_SECRET", "set HUB_JWT_SECRET or HUB_JWT_PUBLIC_KEY_FILE, not both")
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 32 {
		bad("HUB_JWT_SECRET", "must be at least 32 bytes")
	}
	if c.AuthTimeout < 100*time.Millisecond || c.AuthTimeout > time.Hour {
		bad("HUB_AUTH_TIMEOUT", "must be between 100ms and 1h, e.g. 10s")
	}
	// NaN fails every comparison: test for the range, not against it.
	if !(c.ClientRate >= 0 && c.ClientRate <= 1e6) || math.IsInf(c.ClientRate, 0) {
		bad("HUB_CLIENT_RATE", "%v is not 0 (off) or a rate up to 1000000 per second", c.ClientRate)
	}
	if c.ClientBurst < 1 || c.ClientBurst > 1e6 {
		bad("HUB_CLIENT_BURST", "%d is outside 1..1000000", c.ClientBurst)
	}
	if c.MaxRooms < 1 || c.MaxRooms > 100000 {
		bad("HUB_MAX_ROOMS_PER_CLIENT", "%d is outside 1..100000", c.MaxRooms)
	}
	if c.MaxConns < 0 {
		bad("HUB_MAX_CONNECTIONS", "must be 0 (no limit) or positive")
	}
	if c.MaxConnsPerIP < 0 {
		bad("HUB_MAX_CONNECTIONS_PER_IP", "must be 0 (no limit) or positive")
	}
	if c.HTTPReadTimeout < 100*time.Millisecond || c.HTTPReadTimeout > 10*time.Minute {
		bad("HUB_HTTP_READ_TIMEOUT", "must be between 100ms and 10m, e.g. 10s")
	}
	if c.MaxHTTPConns < 0 {
		bad("HUB_MAX_HTTP_CONNECTIONS", "must be 0 (no limit) or positive")
	}
	if c.MaxHTTPConnsPerIP < 0 {
		bad("HUB_MAX_HTTP_CONNECTIONS_PER_IP", "must be 0 (no limit) or positive")
	} else if c.MaxHTTPConns > 0 && c.MaxHTTPConnsPerIP > c.MaxHTTPConns {
		bad("HUB_MAX_HTTP_CONNECTIONS_PER_IP", "%d is more than HUB_MAX_HTTP_CONNECTIONS (%d)", c.MaxHTTPConnsPerIP, c.MaxHTTPConns)
	}
	if _, err := c.TrustedProxies(); err != nil {
		bad("HUB_TRUSTED_PROXIES", "%v", err)
	}
	for _, o := range c.AllowedOrigins {
		if o == "" {
			bad("HUB_ALLOWED_ORIGINS", "has an empty pattern")
		} else if _, err := path.Match(o, ""); err != nil {
			bad("HUB_ALLOWED_ORIGINS", "%q is not a path.Match pattern", o)
		}
	}
	return errors.Join(errs...)
}

// Redis deployments: standalone (HUB_REDIS_URL), Redis Cluster
// (HUB_REDIS_CLUSTER), Sentinel (HUB_REDIS_SENTINELS).
const (
	RedisNone       = ""
	RedisStandalone = "standalone"
	RedisCluster    = "cluster"
	RedisSentinel   = "sentinel"
)

// RedisMode is the Redis deployment the settings name, or RedisNone for the
// in-memory broker. config.Load has checked that at most one is named.
func (c *Config) RedisMode() string {
	switch {
	case c.RedisURL != "":
		return RedisStandalone
	case len(c.RedisCluster) > 0:
		return RedisCluster
	case len(c.RedisSentinels) > 0 || c.RedisMaster != "":
		return RedisSentinel
	}
	return RedisNone
}

// validateRedisMode checks that at most one Redis deployment is named, that
// its addresses are host:port, and that credentials and TLS come with a mode
// that takes them. Passwords never appear in the messages.
func (c *Config) validateRedisMode(bad func(name, format string, args ...any)) {
	var modes []string
	if c.RedisURL != "" {
		modes = append(modes, "HUB_REDIS_URL")
	}
	if len(c.RedisCluster) > 0 {
		modes = append(modes, "HUB_REDIS_CLUSTER")
	}
	if len(c.RedisSentinels) > 0 || c.RedisMaster != "" {
		modes = append(modes, "HUB_REDIS_SENTINELS")
	}
	if len(modes) > 1 {
		bad(modes[1], "set together with %s: choose one Redis deployment (standalone, cluster or sentinel)", modes[0])
	}
	addrs := func(name string, list []string) {
		for _, a := range list {
			host, port, err := net.SplitHostPort(a)
			if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
				if a == "" {
					bad(name, "has an empty entry; want comma-separated host:port addresses")
				} else {
					bad(name, "%q is not host:port", a)
				}
			}
		}
	}
	addrs("HUB_REDIS_CLUSTER", c.RedisCluster)
	addrs("HUB_REDIS_SENTINELS", c.RedisSentinels)
	switch {
	case len(c.RedisSentinels) > 0 && c.RedisMaster == "":
		bad("HUB_REDIS_SENTINEL_MASTER", "must name the primary the sentinels watch (their `sentinel monitor` name)")
	case len(c.RedisSentinels) == 0 && c.RedisMaster != "":
		bad("HUB_REDIS_SENTINELS", "must list the sentinels (host:port) when HUB_REDIS_SENTINEL_MASTER is set")
	}
	if strings.ContainsAny(c.RedisMaster, " \t\r\n") {
		bad("HUB_REDIS_SENTINEL_MASTER", "must not contain spaces")
	}
	var why string
	switch c.RedisMode() {
	case RedisCluster, RedisSentinel:
		return
	case RedisStandalone:
		why = "is for HUB_REDIS_CLUSTER and HUB_REDIS_SENTINELS; with HUB_REDIS_URL put the user, password and rediss:// in the URL"
	default:
		why = "is set, but no Redis is (HUB_REDIS_CLUSTER or HUB_REDIS_SENTINELS)"
	}
	for _, s := range []struct {
		name string
		set  bool
	}{{"HUB_REDIS_USERNAME", c.RedisUsername != ""}, {"HUB_REDIS_PASSWORD", c.RedisPassword != ""}, {"HUB_REDIS_TLS", c.RedisTLS}} {
		if s.set {
			bad(s.name, "%s", why)
		}
	}
}

// WriteCoalesce parses HUB_WRITE_COALESCE as the hub takes it: 0 for auto
// (adaptive batching), -1 for off, or a fixed hold of 1µs to 1s.
func (c *Config) WriteCoalesce() (time.Duration, error) {
	switch c.WriteCoalesceSpec {
	case "auto":
		return 0, nil
	case "off", "0", "0s":
		return -1, nil
	}
	d, err := time.ParseDuration(c.WriteCoalesceSpec)
	if err != nil || d <= 0 || d > time.Second {
		return 0, fmt.Errorf("%q is not auto, off, or a duration from 1µs to 1s (e.g. 2ms)", c.WriteCoalesceSpec)
	}
	return d, nil
}

// TrustedProxies parses HUB_TRUSTED_PROXIES: CIDRs, or addresses for one host.
func (c *Config) TrustedProxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxyList {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR or an IP address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Level is HUB_LOG_LEVEL as a slog level.
func (c *Config) Level() (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}

// RedactedRedisURL is HUB_REDIS_URL without its password, fit for logs.
func (c *Config) RedactedRedisURL() string {
	u, err := url.Parse(c.RedisURL)
	if err != nil {
		return ""
	}
	return u.Redacted()
}

// nameVariables rewrites env's parse errors, which name struct fields, to name
// the environment variables instead.
func nameVariables(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("config: %w", err)
	}
	t := reflect.TypeFor[Config]()
	var errs []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			name := pe.Name
			if f, ok := t.FieldByName(pe.Name); ok {
				name = f.Tag.Get("env")
			}
			errs = append(errs, fmt.Errorf("config: %s: cannot parse as %s: %w", name, pe.Type, pe.Err))
			continue
		}
		errs = append(errs, fmt.Errorf("config: %w", e))
	}
	return errors.Join(errs...)
}
