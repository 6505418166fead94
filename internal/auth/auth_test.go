package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "0123456789abcdef0123456789abcdef"

func sign(t testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid() jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "u42", "exp": time.Now().Add(time.Hour).Unix(), "aud": "hub", "iss": "backend",
		"subscribe": []string{"chat:*", "user:{sub}"}, "publish": []string{"chat:general"},
	}
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	c[k] = v
	if v == nil {
		delete(c, k)
	}
	return c
}

func TestVerifyHS256(t *testing.T) {
	v, err := New(Config{Secret: secret, Audience: "hub", Issuer: "backend"})
	if err != nil {
		t.Fatal(err)
	}
	g, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), valid()))
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if g.Subject != "u42" || g.Expires.Before(time.Now()) {
		t.Errorf("got grant %+v", g)
	}
	for room, want := range map[string]bool{"chat:general": true, "chat:": true, "user:u42": true, "user:u43": false, "other": false} {
		if got := g.CanSubscribe(room); got != want {
			t.Errorf("CanSubscribe(%s): got %v, want %v", room, got, want)
		}
	}
	if !g.CanPublish("chat:general") || g.CanPublish("chat:random") {
		t.Error("publish grants not applied")
	}

	noneToken := func() string {
		s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, valid()).SignedString(jwt.UnsafeAllowNoneSignatureType)
		return s
	}()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name, token, why string
	}{
		{"expired", sign(t, jwt.SigningMethodHS256, []byte(secret), with(valid(), "exp", time.Now().Add(-time.Minute).Unix())), "expired"},
		{"no exp", sign(t, jwt.SigningMethodHS256, []byte(secret), with(valid(), "exp", nil)), "missing"},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), valid()), "signature"},
		{"alg none", noneToken, "signature"},
		{"other algorithm", sign(t, jwt.SigningMethodES256, ecKey, valid()), "signature"},
		{"other audience", sign(t, jwt.SigningMethodHS256, []byte(secret), with(valid(), "aud", "elsewhere")), "audience"},
		{"other issuer", sign(t, jwt.SigningMethodHS256, []byte(secret), with(valid(), "iss", "mallory")), "issuer"},
		{"no sub", sign(t, jwt.SigningMethodHS256, []byte(secret), with(valid(), "sub", nil)), "sub"},
		{"garbage", "not.a.token", "malformed"},
		{"empty", "", "malformed"},
	}
	for _, tt := range tests {
		_, err := v.Verify(tt.token)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: got %v, want ErrInvalid saying %q", tt.name, err, tt.why)
		}
		if err != nil && tt.token != "" && strings.Contains(err.Error(), tt.token) {
			t.Errorf("%s: the error shows the token", tt.name)
		}
	}
}

// A subject is substituted for {sub} literally: a '*' in it matches only a
// '*', never a run of characters.
func TestSubjectIsLiteral(t *testing.T) {
	v, err := New(Config{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sub, grant, room string
		want             bool
	}{
		{"*", "user.{sub}.inbox", "user.admin.inbox", false},
		{"*", "user.{sub}.inbox", "user.*.inbox", true}, // not a room name, but literal
		{"u1*", "user.{sub}", "user.u12345", false},
		{"u1*", "user.{sub}", "user.u1", false},
		{"u1*", "user.{sub}", "user.u1*", true},
		{"*", "{sub}", "anything", false},
		{"u42", "user.{sub}", "user.u42", true},
		{"u42", "user.{sub}", "user.u43", false},
		{"u42", "user.{sub}.*", "user.u42.inbox", true},
		{"u42", "*.{sub}", "team.user.u42", true},
		{"*", "user.{sub}.*", "user.admin.inbox", false},
		{"*", "user.{sub}.*", "user.*.inbox", true},
		{"a*b", "x*{sub}*y", "xQaZZbQy", false},
		{"a*b", "x*{sub}*y", "xQa*bQy", true},
		{"{sub}", "r.{sub}", "r.{sub}", true}, // a subject is not expanded again
	}
	for _, tt := range tests {
		c := valid()
		c["sub"], c["subscribe"], c["publish"] = tt.sub, []string{tt.grant}, []string{tt.grant}
		g, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), c))
		if err != nil {
			t.Fatalf("sub %q: %v", tt.sub, err)
		}
		if got := g.CanSubscribe(tt.room); got != tt.want {
			t.Errorf("sub %q, grant %q: CanSubscribe(%q): got %v, want %v", tt.sub, tt.grant, tt.room, got, tt.want)
		}
		if got := g.CanPublish(tt.room); got != tt.want {
			t.Errorf("sub %q, grant %q: CanPublish(%q): got %v, want %v", tt.sub, tt.grant, tt.room, got, tt.want)
		}
	}
}

// exp, nbf and iat must be JSON numbers; golang-jwt on its own also takes a
// string holding a number.
func TestTimeClaimsMustBeNumbers(t *testing.T) {
	v, err := New(Config{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	past := time.Now().Add(-time.Minute).Unix()
	tests := []struct {
		name  string
		claim string
		value any
		ok    bool
	}{
		{"exp number", "exp", exp, true},
		{"exp fraction", "exp", float64(exp) + 0.5, true},
		{"exp string", "exp", strconv.FormatInt(exp, 10), false},
		{"exp null", "exp", jsonNull{}, false},
		{"exp bool", "exp", true, false},
		{"exp object", "exp", map[string]any{"n": exp}, false},
		{"nbf number", "nbf", past, true},
		{"nbf string", "nbf", strconv.FormatInt(past, 10), false},
		{"iat number", "iat", past, true},
		{"iat string", "iat", strconv.FormatInt(past, 10), false},
		{"iat array", "iat", []int64{past}, false},
	}
	for _, tt := range tests {
		c := valid()
		delete(c, "aud")
		delete(c, "iss")
		c[tt.claim] = tt.value
		if _, ok := tt.value.(jsonNull); ok {
			c[tt.claim] = nil
		}
		_, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), c))
		if got := err == nil; got != tt.ok {
			t.Errorf("%s: got err %v, want accepted %v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tt.name, err)
		}
	}
}

type jsonNull struct{}

func writePEM(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	return path
}

func TestVerifyWithPublicKeys(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tt := range []struct {
		name   string
		pub    any
		method jwt.SigningMethod
		priv   any
	}{
		{"ES256", &ecKey.PublicKey, jwt.SigningMethodES256, ecKey},
		{"RS256", &rsaKey.PublicKey, jwt.SigningMethodRS256, rsaKey},
	} {
		v, err := New(Config{PublicKeyFile: writePEM(t, tt.pub)})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if _, err := v.Verify(sign(t, tt.method, tt.priv, valid())); err != nil {
			t.Errorf("%s: valid token: %v", tt.name, err)
		}
		// An HS256 token "signed" with the public key must not pass (key confusion).
		der, _ := x509.MarshalPKIXPublicKey(tt.pub)
		forged := sign(t, jwt.SigningMethodHS256, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), valid())
		if _, err := v.Verify(forged); err == nil {
			t.Errorf("%s: an HS256 token keyed with the public key passed", tt.name)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	for _, c := range []Config{
		{}, {Secret: "short"}, {Secret: secret, PublicKeyFile: bad}, {PublicKeyFile: bad},
		{PublicKeyFile: filepath.Join(t.TempDir(), "missing.pem")},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v): got nil error", c)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, room string
		want          bool
	}{
		{"chat:*", "chat:1", true}, {"chat:*", "chat:", true}, {"chat:*", "chat", false},
		{"*", "anything", true}, {"a*b*c", "aXXbYYc", true}, {"a*b*c", "aXXbYY", false},
		{"exact", "exact", true}, {"exact", "exactly", false}, {"*:admin", "x:y:admin", true},
		{"", "", true}, {"", "a", false}, {"**", "a", true},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.room); got != tt.want {
			t.Errorf("Match(%q, %q): got %v, want %v", tt.pattern, tt.room, got, tt.want)
		}
	}
}

// FuzzVerify: no token panics the verifier, and none but a properly signed
// one passes.
func FuzzVerify(f *testing.F) {
	v, err := New(Config{Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sign(f, jwt.SigningMethodHS256, []byte(secret), valid()))
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		g, err := v.Verify(token)
		if err == nil && g.Subject == "" {
			t.Fatal("a grant without a subject")
		}
	})
}

func FuzzMatch(f *testing.F) {
	f.Add("chat:*", "chat:1")
	f.Add("*a*b*", "xaybz")
	f.Add("a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab")
	f.Add("a*b*a", "aba")
	f.Fuzz(func(t *testing.T, pattern, room string) {
		if len(pattern) > 64 || len(room) > 256 {
			return
		}
		got := Match(pattern, room)
		if !strings.Contains(pattern, "*") && got != (pattern == room) {
			t.Fatalf("Match(%q, %q) without '*' is not equality", pattern, room)
		}
		if !utf8.ValidString(pattern) || !utf8.ValidString(room) {
			return // the regular expression reads runes
		}
		if want := globRegexp(pattern).MatchString(room); got != want {
			t.Fatalf("Match(%q, %q): got %v, want %v (as a regular expression)", pattern, room, got, want)
		}
	})
}

// globRegexp is pattern as a regular expression: the reference Match is
// checked against.
func globRegexp(pattern string) *regexp.Regexp {
	parts := strings.Split(pattern, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
}

// FuzzSubject: with a grant holding {sub} and no wildcard, the only room it
// opens is the one named by the subject, whatever the subject holds.
func FuzzSubject(f *testing.F) {
	v, err := New(Config{Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("*", "user.admin.inbox")
	f.Add("u1*", "user.u12345.inbox")
	f.Add("u42", "user.u42.inbox")
	f.Fuzz(func(t *testing.T, sub, room string) {
		if sub == "" || len(sub) > 64 || len(room) > 256 {
			return
		}
		c := valid()
		c["sub"], c["subscribe"] = sub, []string{"user.{sub}.inbox"}
		g, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), c))
		if err != nil {
			return // a subject JSON cannot carry as given (invalid UTF-8)
		}
		if got, want := g.CanSubscribe(room), room == "user."+g.Subject+".inbox"; got != want {
			t.Fatalf("sub %q: CanSubscribe(%q): got %v, want %v", sub, room, got, want)
		}
	})
}

// BenchmarkVerify is the cost of a token check, once per connection (and per
// refresh).
func BenchmarkVerify(b *testing.B) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	dir := b.TempDir()
	pemFile := func(name string, pub any) string {
		der, _ := x509.MarshalPKIXPublicKey(pub)
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
		return p
	}
	for _, bc := range []struct {
		name   string
		cfg    Config
		method jwt.SigningMethod
		key    any
	}{
		{"HS256", Config{Secret: secret}, jwt.SigningMethodHS256, []byte(secret)},
		{"ES256", Config{PublicKeyFile: pemFile("ec.pem", &ecKey.PublicKey)}, jwt.SigningMethodES256, ecKey},
		{"RS256", Config{PublicKeyFile: pemFile("rsa.pem", &rsaKey.PublicKey)}, jwt.SigningMethodRS256, rsaKey},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v, err := New(bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			token := sign(b, bc.method, bc.key, valid())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
