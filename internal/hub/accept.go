package hub

import (
	"bufio"
	"bytes"
	"net"
	"net/http"

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

// Accept upgrades r to a WebSocket like websocket.Accept, and also returns the
// underlying network connection, which Serve needs to cut a connection even
// while a close handshake is waiting on it.
//
// The connection does not depend on the HTTP handler: the handler may return
// once Serve runs on a goroutine of its own, and net/http then frees its
// per-connection goroutine and buffers.
func Accept(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) (*websocket.Conn, net.Conn, error) {
	rec := &hijackRecorder{ResponseWriter: w}
	conn, err := websocket.Accept(rec, r, opts)
	if err != nil {
		return nil, nil, err
	}
	return conn, rec.conn, nil
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
