package demo

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	jsclient "github.com/hubcluster/hubcluster/clients/js"
)

func get(t *testing.T, h http.Handler, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	body, _ := io.ReadAll(w.Result().Body)
	return w.Result(), string(body)
}

func TestRoutes(t *testing.T) {
	h := Handler("node-7")
	tests := []struct {
		path, wantType, wantBody string
		wantStatus               int
	}{
		{"/", "text/html; charset=utf-8", `<script type="module" src="/demo/demo.js">`, 200},
		{"/demo/demo.js", "text/javascript; charset=utf-8", `from '/demo/hubcluster.js'`, 200},
		{"/demo/demo.css", "text/css; charset=utf-8", "#messages", 200},
		{"/demo/hubcluster.js", "text/javascript; charset=utf-8", "export function connect(", 200},
		{"/demo/node", "application/json", `"node":"node-7"`, 200},
		{"/index.html", "", "", 404},
		{"/demo/", "", "", 404},
		{"/demo/missing.js", "", "", 404},
	}
	for _, tt := range tests {
		resp, body := get(t, h, tt.path, nil)
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("GET %s: got status %d, want %d", tt.path, resp.StatusCode, tt.wantStatus)
			continue
		}
		if tt.wantStatus != 200 {
			continue
		}
		if got := resp.Header.Get("Content-Type"); got != tt.wantType {
			t.Errorf("GET %s: got Content-Type %q, want %q", tt.path, got, tt.wantType)
		}
		if !strings.Contains(body, tt.wantBody) {
			t.Errorf("GET %s: got a body without %q", tt.path, tt.wantBody)
		}
	}
}

// The page loads nothing from elsewhere: every src and href is a file the
// handler serves (or inline data), and its policy allows only its own
// scripts.
func TestPageNeedsNoOtherServer(t *testing.T) {
	h := Handler("n")
	resp, page := get(t, h, "/", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("got Content-Security-Policy %q, want scripts from the node only", csp)
	}
	_, script := get(t, h, "/demo/demo.js", nil)
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"|from '([^']+)'`).FindAllStringSubmatch(page+script, -1)
	if len(refs) < 4 {
		t.Fatalf("found %d references in the page, want its stylesheet, script, icon and the client", len(refs))
	}
	for _, m := range refs {
		ref := m[1] + m[2]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if resp, _ := get(t, h, ref, nil); resp.StatusCode != 200 {
			t.Errorf("the page refers to %s, which the node answers with %d", ref, resp.StatusCode)
		}
	}
}

// One copy of the client: the node serves the module of clients/js.
func TestServesTheClientModule(t *testing.T) {
	_, body := get(t, Handler("n"), "/demo/hubcluster.js", nil)
	if body != jsclient.Module || len(body) < 1000 {
		t.Errorf("got %d bytes, want clients/js/hubcluster.js (%d bytes)", len(body), len(jsclient.Module))
	}
}

func TestNodeEndpoint(t *testing.T) {
	tests := []struct {
		name   string
		header http.Header
		want   bool
	}{
		{"direct", nil, false},
		{"through a proxy", http.Header{"X-Forwarded-For": {"10.0.0.1"}}, true},
	}
	for _, tt := range tests {
		resp, body := get(t, Handler("b"), "/demo/node", tt.header)
		var got struct {
			Node    string
			Proxied bool
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || got.Node != "b" || got.Proxied != tt.want {
			t.Errorf("%s: got %s (%v), want node b, proxied %v", tt.name, body, err, tt.want)
		}
		// A page served by another node may read it.
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("%s: got Access-Control-Allow-Origin %q, want *", tt.name, got)
		}
	}
}
