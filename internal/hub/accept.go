package hub

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// Buffer sizes of an accepted connection. net/http's are 4 KiB each and stay
// alive as long as its handler runs; these are what a connection keeps for its
// whole life, so they are small: a larger frame is read and written past the
// buffer, straight from and to the socket.
const (
	connReadBuffer  = 512
	connWriteBuffer = 512
)

// Conn is an accepted WebSocket connection, ready for Serve.
type Conn struct {
	ws    *websocket.Conn
	raw   net.Conn // the network connection under ws
	pings *pingGate
}

// Accept upgrades r to a WebSocket like websocket.Accept, keeping the
// network connection under it, which Serve needs to cut a connection even
// while a close handshake is waiting on it. opts may be nil; its
// OnPingReceived is the hub's (pings count against the client's rate limit).
//
// The connection does not depend on the HTTP handler: the handler may return
// once Serve runs on a goroutine of its own, and net/http then frees its
// per-connection goroutine and buffers. Deadlines the HTTP server set for
// the request are cleared: from here on the hub bounds every write itself.
func Accept(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) (*Conn, error) {
	rec := &hijackRecorder{ResponseWriter: w}
	var o websocket.AcceptOptions
	if opts != nil {
		o = *opts
	}
	gate := &pingGate{}
	o.OnPingReceived = gate.onPing
	ws, err := websocket.Accept(rec, r, &o)
	if err != nil {
		return nil, err
	}
	return &Conn{ws: ws, raw: rec.conn, pings: gate}, nil
}

// hijackRecorder keeps the net.Conn that websocket.Accept hijacks, and hands
// websocket.Accept small buffers of its own instead of net/http's.
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
	if err != nil {
		return nil, nil, err
	}
	// The server's read and write timeouts bound plain requests; a WebSocket
	// lives on past them.
	c.SetDeadline(time.Time{})
	h.conn = c
	var rc net.Conn = c
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right behind its upgrade request.
		b, _ := brw.Reader.Peek(n)
		rc = &prefixConn{Conn: c, prefix: bytes.Clone(b)}
	}
	return rc, bufio.NewReadWriter(bufio.NewReaderSize(rc, connReadBuffer), bufio.NewWriterSize(c, connWriteBuffer)), nil
}

func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// prefixConn reads prefix before the connection itself.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
