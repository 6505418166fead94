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
// characters (none included); "{sub}" stands for the token's subject.
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
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
	subscribe []string
	publish   []string
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

type claims struct {
	jwt.RegisteredClaims
	Subscribe []string `json:"subscribe"`
	Publish   []string `json:"publish"`
}

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
	g.subscribe = expand(c.Subscribe, c.Subject)
	g.publish = expand(c.Publish, c.Subject)
	return g, nil
}

// reason names a parse failure in a few words.
func reason(err error) string {
	switch {
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

func expand(patterns []string, sub string) []string {
	out := make([]string, 0, len(patterns))
	for _, p := range patterns {
		out = append(out, strings.ReplaceAll(p, "{sub}", sub))
	}
	return out
}

// CanSubscribe reports whether the grant allows subscribing to room.
func (g *Grant) CanSubscribe(room string) bool { return matchAny(g.subscribe, room) }

// CanPublish reports whether the grant allows publishing to room.
func (g *Grant) CanPublish(room string) bool { return matchAny(g.publish, room) }

func matchAny(patterns []string, room string) bool {
	for _, p := range patterns {
		if Match(p, room) {
			return true
		}
	}
	return false
}

// Match reports whether room matches pattern, where '*' matches any run of
// characters and everything else matches itself.
func Match(pattern, room string) bool {
	// Iterative glob with backtracking to the last '*': linear in practice.
	p, r := 0, 0
	star, mark := -1, 0
	for r < len(room) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, r
			p++
		case p < len(pattern) && pattern[p] == room[r]:
			p++
			r++
		case star >= 0:
			p = star + 1
			mark++
			r = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
