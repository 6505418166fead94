// Package auth verifies connection tokens (JWT) and turns their claims into the
// rooms a connection may subscribe and publish to.
//
// A token is signed with HS256 (a shared secret) or with RS256 or ES256 (the
// node holds the public key). "exp" is required; "aud" and "iss" are checked
// when configured; "alg": "none" and every algorithm but the configured ones
// are refused. Claims:
//
//	{"sub": "u42", "exp": 1767225600,
//	 "subscribe": ["chat:*", "user:{sub}"], "publish": ["chat:*"]}
//
// A pattern matches a room name exactly, except that '*' matches any run of
// characters (none included); "{sub}" stands for the token's subject, taken
// literally: a '*' in the subject matches only a '*' (which no room name
// holds), never a run of characters.
//
// "exp", "nbf" and "iat" must be JSON numbers when present; a string holding
// a number is refused.
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Config selects how tokens are verified. Exactly one of Secret and
// PublicKeyFile must be set.
type Config struct {
	Secret        string // HS256
	PublicKeyFile string // PEM: RSA (RS256) or EC P-256 (ES256) public key
	Audience      string // required "aud" when set
	Issuer        string // required "iss" when set
}

// Verifier checks tokens. Its methods may be called concurrently.
type Verifier struct {
	parser *jwt.Parser
	key    any
}

// Grant is what a valid token allows.
type Grant struct {
	Subject   string
	Expires   time.Time
	subscribe []pattern
	publish   []pattern
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithLeeway(5 * time.Second)}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v := &Verifier{}
	switch {
	case cfg.Secret != "" && cfg.PublicKeyFile != "":
		return nil, errors.New("auth: set a secret or a public key file, not both")
	case cfg.Secret != "":
		if len(cfg.Secret) < 32 {
			return nil, errors.New("auth: the HS256 secret must be at least 32 bytes")
		}
		v.key = []byte(cfg.Secret)
		opts = append(opts, jwt.WithValidMethods([]string{"HS256"}))
	case cfg.PublicKeyFile != "":
		pemBytes, err := os.ReadFile(cfg.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		key, method, err := parsePublicKey(pemBytes)
		if err != nil {
			return nil, err
		}
		v.key = key
		opts = append(opts, jwt.WithValidMethods([]string{method}))
	default:
		return nil, errors.New("auth: no secret and no public key file")
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func parsePublicKey(pemBytes []byte) (crypto.PublicKey, string, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, "", errors.New("auth: public key file holds no PEM block")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		if rk, rerr := x509.ParsePKCS1PublicKey(block.Bytes); rerr == nil {
			key = rk
		} else {
			return nil, "", fmt.Errorf("auth: public key: %w", err)
		}
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, "", errors.New("auth: RSA key shorter than 2048 bits")
		}
		return k, "RS256", nil
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize != 256 {
			return nil, "", errors.New("auth: EC key is not P-256 (ES256)")
		}
		return k, "ES256", nil
	default:
		return nil, "", fmt.Errorf("auth: unsupported public key type %T", key)
	}
}

// claims are the token's claims. The registered ones are spelled out, not
// embedded from jwt.RegisteredClaims, so that the time claims decode as
// strict numbers.
type claims struct {
	Subject   string           `json:"sub"`
	Issuer    string           `json:"iss"`
	Audience  jwt.ClaimStrings `json:"aud"`
	ExpiresAt *numericDate     `json:"exp"`
	NotBefore *numericDate     `json:"nbf"`
	IssuedAt  *numericDate     `json:"iat"`
	Subscribe []string         `json:"subscribe"`
	Publish   []string         `json:"publish"`
}

var _ jwt.Claims = claims{}

func (c claims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt.date(), nil }
func (c claims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore.date(), nil }
func (c claims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt.date(), nil }
func (c claims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c claims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c claims) GetAudience() (jwt.ClaimStrings, error)       { return c.Audience, nil }

// numericDate is a JWT NumericDate that must be a JSON number: jwt.NumericDate
// alone also takes a string that holds one ("exp": "1767225600").
type numericDate struct{ jwt.NumericDate }

// errNotNumber is wrapped by a token whose time claim is not a JSON number.
var errNotNumber = errors.New("exp, nbf and iat must be JSON numbers")

func (d *numericDate) UnmarshalJSON(b []byte) error {
	// A JSON number starts with '-' or a digit; whitespace around it is
	// trimmed by the decoder before this is called. null never gets here.
	if len(b) == 0 || (b[0] != '-' && (b[0] < '0' || b[0] > '9')) {
		return errNotNumber
	}
	return d.NumericDate.UnmarshalJSON(b)
}

func (d *numericDate) date() *jwt.NumericDate {
	if d == nil {
		return nil
	}
	return &d.NumericDate
}

var _ json.Unmarshaler = (*numericDate)(nil)

// ErrInvalid is wrapped by every rejection; its message says why, never the
// token.
var ErrInvalid = errors.New("invalid token")

// Verify checks token and returns what it grants.
func (v *Verifier) Verify(token string) (*Grant, error) {
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.key, nil })
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, reason(err))
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: no sub claim", ErrInvalid)
	}
	g := &Grant{Subject: c.Subject, Expires: c.ExpiresAt.Time}
	g.subscribe = compileAll(c.Subscribe, c.Subject)
	g.publish = compileAll(c.Publish, c.Subject)
	return g, nil
}

// reason names a parse failure in a few words.
func reason(err error) string {
	switch {
	case errors.Is(err, errNotNumber):
		return errNotNumber.Error()
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "a required claim is missing"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	default:
		return "rejected"
	}
}

// CanSubscribe reports whether the grant allows subscribing to room.
func (g *Grant) CanSubscribe(room string) bool { return matchAny(g.subscribe, room) }

// CanPublish reports whether the grant allows publishing to room.
func (g *Grant) CanPublish(room string) bool { return matchAny(g.publish, room) }

func matchAny(patterns []pattern, room string) bool {
	for _, p := range patterns {
		if p.match(room) {
			return true
		}
	}
	return false
}

// Match reports whether room matches pattern, where '*' matches any run of
// characters and everything else matches itself ("{sub}" included).
func Match(pattern, room string) bool { return compile(pattern, "", false).match(room) }

// pattern is a compiled grant: the literal runs between its wildcards. A
// pattern without a wildcard has one part, which must equal the room; with n
// wildcards it has n+1 parts (empty ones included, as in strings.Split), the
// first a prefix of the room, the last a suffix, the others found in order in
// between. Where a literal came from (the grant or the subject) no longer
// matters once compiled, which is what keeps a subject literal.
type pattern struct{ parts []string }

func compileAll(raw []string, sub string) []pattern {
	out := make([]pattern, 0, len(raw))
	for _, r := range raw {
		out = append(out, compile(r, sub, true))
	}
	return out
}

// compile splits raw at its '*'s; when substitute is set, each "{sub}" in it
// becomes sub as literal text, its '*'s included.
func compile(raw, sub string, substitute bool) pattern {
	var parts []string
	var lit strings.Builder
	for i := 0; i < len(raw); {
		switch {
		case raw[i] == '*':
			parts = append(parts, lit.String())
			lit.Reset()
			i++
		case substitute && strings.HasPrefix(raw[i:], "{sub}"):
			lit.WriteString(sub)
			i += len("{sub}")
		default:
			lit.WriteByte(raw[i])
			i++
		}
	}
	return pattern{parts: append(parts, lit.String())}
}

// match reports whether room matches p. Taking each middle part at its
// leftmost place is correct for wildcards that match any run, so there is no
// backtracking: the cost is that of the strings.Index calls, about linear in
// the room's length per part.
func (p pattern) match(room string) bool {
	if len(p.parts) == 1 {
		return room == p.parts[0]
	}
	first, last := p.parts[0], p.parts[len(p.parts)-1]
	if len(room) < len(first)+len(last) || !strings.HasPrefix(room, first) || !strings.HasSuffix(room, last) {
		return false
	}
	rest := room[len(first) : len(room)-len(last)]
	for _, lit := range p.parts[1 : len(p.parts)-1] {
		i := strings.Index(rest, lit)
		if i < 0 {
			return false
		}
		rest = rest[i+len(lit):]
	}
	return true
}
