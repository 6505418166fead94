// Package demo serves the chat demo of HUB_DEMO=true: a page at / that chats
// through the node with the JavaScript client and lists who is in the room
// (presence: user, or client id without auth, and node), and the node's id at
// /demo/node, so that the page can show which node it is on. The page, its
// script and the client are embedded in the binary: no build step, no CDN.
package demo

import (
	"embed"
	"encoding/json"
	"net/http"

	jsclient "github.com/hubcluster/hubcluster/clients/js"
)

//go:embed static
var static embed.FS

// The page's policy: its own scripts and styles only, and connections to
// any node (the page may be told of other nodes' URLs).
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss: http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the demo: GET / (the page), GET /demo/demo.js,
// /demo/demo.css and /demo/hubcluster.js (the client), and GET /demo/node,
// {"node": id, "proxied": bool}. proxied says the request came through a
// proxy (it carries X-Forwarded-For): the page's WebSocket, which the proxy
// balances on its own, may then be on another node than this answer's.
// /demo/node may be read from any origin, so that a page served by one node
// can ask another which it is.
func Handler(nodeID string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", asset(mustRead("static/index.html"), "text/html; charset=utf-8"))
	mux.Handle("GET /demo/demo.js", asset(mustRead("static/demo.js"), "text/javascript; charset=utf-8"))
	mux.Handle("GET /demo/demo.css", asset(mustRead("static/demo.css"), "text/css; charset=utf-8"))
	mux.Handle("GET /demo/hubcluster.js", asset([]byte(jsclient.Module), "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /demo/node", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		json.NewEncoder(w).Encode(map[string]any{"node": nodeID, "proxied": r.Header.Get("X-Forwarded-For") != ""})
	})
	return mux
}

func mustRead(name string) []byte {
	b, err := static.ReadFile(name)
	if err != nil {
		panic("demo: " + err.Error()) // the files are embedded: only a build without them gets here
	}
	return b
}

// asset serves body as a file of type contentType.
func asset(body []byte, contentType string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		w.Write(body)
	})
}
