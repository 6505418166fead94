package server

import (
	"io"
	"net/http"
	"testing"
)

// Config.Demo, when set, answers the GET requests no other route takes;
// without it those are 404, and the other endpoints are the same either way.
func TestDemoRoutes(t *testing.T) {
	demo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "demo "+r.URL.Path) })
	tests := []struct {
		name       string
		demo       http.Handler
		path       string
		wantStatus int
		wantBody   string
	}{
		{"off: the root", nil, "/", 404, ""},
		{"off: a demo file", nil, "/demo/demo.js", 404, ""},
		{"on: the root", demo, "/", 200, "demo /"},
		{"on: a demo file", demo, "/demo/demo.js", 200, "demo /demo/demo.js"},
		{"on: another path", demo, "/other", 200, "demo /other"},
		{"on: healthz", demo, "/healthz", 200, `{"status":"ok"}` + "\n"},
	}
	for _, tt := range tests {
		n := startNode(t, Config{Demo: tt.demo}, true)
		resp, err := http.Get(n.url + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus || (tt.wantBody != "" && string(body) != tt.wantBody) {
			t.Errorf("%s: GET %s: got %d %q, want %d %q", tt.name, tt.path, resp.StatusCode, body, tt.wantStatus, tt.wantBody)
		}
	}
}
