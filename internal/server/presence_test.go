package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

func TestOperatorEndpoints(t *testing.T) {
	broker := pubsub.NewMemory(pubsub.MemoryConfig{NodeInfo: func() pubsub.NodeInfo { return pubsub.NodeInfo{ID: "n1"} }})
	h, err := hub.New(hub.Config{NodeID: "n1", Presence: broker}, broker)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { broker.Run(ctx, h); close(done) }()
	defer func() { cancel(); <-done }()
	broker.Join("r1", pubsub.Member{Client: "c1", User: "u", Node: "n1"})
	broker.Join("r2", pubsub.Member{Client: "c2", User: "v", Node: "n1"})
	ts := httptest.NewServer(New(Config{APIKey: "k", MaxMessageBytes: 65536, Gatherer: prometheus.NewRegistry()}, h))
	defer ts.Close()

	call := func(method, path, body string, key bool) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if key {
			req.Header.Set("Authorization", "Bearer k")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	for _, tc := range []struct {
		method, path, body string
		key                bool
		status             int
		check              func(map[string]any) bool
	}{
		{"GET", "/v1/presence?room=r1", "", false, 401, nil},
		{"GET", "/v1/nodes", "", false, 401, nil},
		{"POST", "/v1/disconnect", `{"user":"u"}`, false, 401, nil},
		{"GET", "/v1/presence?room=r1", "", true, 200, func(m map[string]any) bool { return m["count"] == 1.0 && len(m["members"].([]any)) == 1 }},
		{"GET", "/v1/presence?room=bad%20room", "", true, 400, func(m map[string]any) bool { return m["code"] == "bad_room" }},
		{"GET", "/v1/nodes", "", true, 200, func(m map[string]any) bool { return len(m["nodes"].([]any)) == 1 }},
		{"GET", "/v1/rooms", "", true, 200, func(m map[string]any) bool { return len(m["rooms"].([]any)) == 2 && m["next"] == "" }},
		{"GET", "/v1/rooms?limit=1", "", true, 200, func(m map[string]any) bool { return len(m["rooms"].([]any)) == 1 && m["next"] == "r1" }},
		{"GET", "/v1/rooms?cursor=r1&limit=1", "", true, 200, func(m map[string]any) bool { return len(m["rooms"].([]any)) == 1 && m["next"] == "" }},
		{"GET", "/v1/rooms?cursor=r2", "", true, 200, func(m map[string]any) bool { return len(m["rooms"].([]any)) == 0 && m["next"] == "" }},
		{"GET", "/v1/rooms?limit=0", "", true, 400, nil},
		{"GET", "/v1/rooms?limit=1001", "", true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"u","code":4100,"reason":"bye"}`, true, 202, nil},
		{"POST", "/v1/disconnect", `{"user":"u"}`, true, 202, nil},
		{"POST", "/v1/disconnect", `{"user":"u","code":4000}`, true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"u","code":1012}`, true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"","code":1000}`, true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"u","reason":"` + strings.Repeat("x", 121) + `"}`, true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"u","extra":1}`, true, 400, nil},
		{"POST", "/v1/disconnect", `{"user":"u"} {}`, true, 400, nil},
		{"POST", "/v1/unsubscribe", `{"user":"u","room":"r1"}`, true, 202, nil},
		{"POST", "/v1/unsubscribe", `{"user":"u","room":"no room"}`, true, 400, nil},
		{"POST", "/v1/unsubscribe", `{"user":"u"}`, true, 400, nil},
	} {
		status, body := call(tc.method, tc.path, tc.body, tc.key)
		if status != tc.status || (tc.check != nil && !tc.check(body)) {
			t.Errorf("%s %s %s: got %d %v, want %d", tc.method, tc.path, tc.body, status, body, tc.status)
		}
	}
}
