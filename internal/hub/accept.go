package hub

import (
	"bufio"
	"net"
	"net/http"

	"github.com/coder/websocket"
)

// Accept upgrades r to a WebSocket like websocket.Accept, and also returns the
// underlying network connection, which Serve needs to cut a connection even
// while a close handshake is waiting on it.
func Accept(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) (*websocket.Conn, net.Conn, error) {
	rec := &hijackRecorder{ResponseWriter: w}
	conn, err := websocket.Accept(rec, r, opts)
	if err != nil {
		return nil, nil, err
	}
	return conn, rec.conn, nil
}

// hijackRecorder keeps the net.Conn that websocket.Accept hijacks.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, brw, err := hj.Hijack()
	h.conn = c
	return c, brw, err
}

func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }
