package server

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// checkOrigin decides whether a browser may send r from the page it came
// from, for the WebSocket upgrade and for POST /v1/publish alike. A request
// without an Origin header is not from a browser (curl, a backend) and may.
// Otherwise the origin's host must be the request's own Host, or match one of
// patterns, as coder/websocket's AcceptOptions.OriginPatterns do: path.Match
// on the origin's host ("example.com", "*.example.com"), or on
// scheme://host when the pattern holds "://", without regard to case.
func checkOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("origin %q is not a URL", origin)
	}
	if u.Host != "" && strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		ok, err := path.Match(strings.ToLower(p), strings.ToLower(target))
		if err != nil {
			return fmt.Errorf("origin pattern %q: %w", p, err)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("origin %q is not allowed for host %q", origin, r.Host)
}
