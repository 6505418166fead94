package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/coder/websocket"
)

// checkOrigin follows coder/websocket's rules; the WebSocket upgrade and
// POST /v1/publish both use it.
func TestCheckOrigin(t *testing.T) {
	tests := []struct {
		origin   string
		patterns []string
		want     bool
	}{
		{"", nil, true}, // not a browser
		{"http://node.test:8080", nil, true},
		{"https://NODE.test:8080", nil, true}, // hosts compare without case
		{"http://node.test", nil, false},      // another port is another origin
		{"http://evil.example.net", nil, false},
		{"http://evil.example.net", []string{"app.example.com"}, false},
		{"https://app.example.com", []string{"app.example.com"}, true},
		{"https://APP.Example.com", []string{"app.example.COM"}, true},
		{"https://app.example.com:8443", []string{"app.example.com"}, false},
		{"https://a.example.com", []string{"*.example.com"}, true},
		{"https://example.com", []string{"*.example.com"}, false},
		{"https://a.b.example.com", []string{"*.example.com"}, true}, // path.Match: '*' crosses dots, stops only at '/'
		{"https://example.com.evil.net", []string{"example.com"}, false},
		{"https://app.example.com", []string{"https://app.example.com"}, true},
		{"http://app.example.com", []string{"https://app.example.com"}, false},
		{"null", nil, false},
		{"null", []string{"app.example.com"}, false},
		{"%zz", []string{"*"}, false},
		{"http://x.test", []string{"["}, false}, // a bad pattern allows nothing
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "http://node.test:8080/v1/publish", nil)
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		err := checkOrigin(r, tt.patterns)
		if got := err == nil; got != tt.want {
			t.Errorf("origin %q, patterns %q: got allowed %v (%v), want %v", tt.origin, tt.patterns, got, err, tt.want)
		}
		// The same decision as coder/websocket's own check.
		u := httptest.NewRequest("GET", "http://node.test:8080/ws", nil)
		u.Header = r.Header.Clone()
		u.Header.Set("Connection", "Upgrade")
		u.Header.Set("Upgrade", "websocket")
		u.Header.Set("Sec-WebSocket-Version", "13")
		u.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		rec := httptest.NewRecorder()
		websocket.Accept(rec, u, &websocket.AcceptOptions{OriginPatterns: tt.patterns})
		if theirs := rec.Code != http.StatusForbidden; theirs != tt.want {
			t.Errorf("origin %q, patterns %q: coder/websocket says allowed %v (HTTP %d), want %v", tt.origin, tt.patterns, theirs, rec.Code, tt.want)
		}
	}
}
