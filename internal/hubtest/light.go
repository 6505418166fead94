package hubtest

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Light is a bare WebSocket client connection for tests that hold thousands
// of them: no goroutine, a 1 KiB read buffer, nothing read unless Next is
// called. What the node sends while nobody reads waits in the socket
// buffers (a test that holds Lights idle sends them little, and turns
// HUB_PING_INTERVAL up: only Next answers the node's pings).
//
// Its methods must not be called concurrently with each other, except
// Close, and fail nothing: they return errors, so they may be used from any
// goroutine.
type Light struct {
	conn net.Conn
	br   *bufio.Reader
}

// LightClose is the error Next returns when the node sent a close frame.
type LightClose struct {
	Code   int
	Reason string
}

func (e *LightClose) Error() string {
	return fmt.Sprintf("hubtest: closed by the server: %d %q", e.Code, e.Reason)
}

// acceptGUID is RFC 6455's key suffix for Sec-WebSocket-Accept.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// DialLight connects to addr (host:port) and upgrades path (such as
// "/ws?token=..."), within timeout. local, when not empty, is the source
// address to dial from (127.0.0.2, ...).
func DialLight(addr, path, local string, timeout time.Duration) (*Light, error) {
	d := net.Dialer{Timeout: timeout}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("hubtest: upgrade %s%s: %w", addr, path, err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(key + acceptGUID))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("hubtest: upgrade %s%s: HTTP %d", addr, path, resp.StatusCode)
	}
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		return nil, fmt.Errorf("hubtest: upgrade %s%s: wrong Sec-WebSocket-Accept", addr, path)
	}
	conn.SetDeadline(time.Time{})
	return &Light{conn: conn, br: br}, nil
}

// Send writes text as one text frame, within 10s.
func (l *Light) Send(text string) error { return l.write(0x1, []byte(text)) }

func (l *Light) write(opcode byte, p []byte) error {
	frame := make([]byte, 0, 14+len(p))
	frame = append(frame, 0x80|opcode)
	switch n := len(p); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n <= 0xffff:
		frame = append(frame, 0x80|126)
		frame = binary.BigEndian.AppendUint16(frame, uint16(n))
	default:
		frame = append(frame, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range p {
		frame = append(frame, b^mask[i%4])
	}
	l.conn.SetWriteDeadline(time.Now().Add(dialTimeout))
	_, err := l.conn.Write(frame)
	return err
}

// Next returns the payload of the next text message, answering pings on the
// way, or an error when none comes within timeout. A close frame from the
// node is returned as a *LightClose. A timeout in the middle of a frame
// leaves the connection unreadable: give Next time enough.
func (l *Light) Next(timeout time.Duration) ([]byte, error) {
	l.conn.SetReadDeadline(time.Now().Add(timeout))
	defer l.conn.SetReadDeadline(time.Time{})
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(l.br, h[:]); err != nil {
			return nil, err
		}
		fin, opcode := h[0]&0x80 != 0, h[0]&0x0f
		if h[1]&0x80 != 0 {
			return nil, errors.New("hubtest: the server sent a masked frame")
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(l.br, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(l.br, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 64<<20 {
			return nil, fmt.Errorf("hubtest: a frame of %d bytes", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(l.br, p); err != nil {
			return nil, err
		}
		switch opcode {
		case 0x9: // ping
			if err := l.write(0xA, p); err != nil {
				return nil, err
			}
		case 0xA: // pong
		case 0x8: // close
			e := &LightClose{Code: 1005}
			if len(p) >= 2 {
				e.Code, e.Reason = int(binary.BigEndian.Uint16(p)), string(p[2:])
			}
			return nil, e
		case 0x1, 0x0: // text, continuation
			msg = append(msg, p...)
			if fin {
				return msg, nil
			}
		default:
			return nil, fmt.Errorf("hubtest: unexpected opcode %d", opcode)
		}
	}
}

// Discard reads and throws away what has arrived, without waiting, so that
// an idle Light's socket buffers never fill up; it returns how many bytes it
// threw away, and an error when the connection has ended. Once Discard has
// been called, Next must not be: frames are cut anywhere.
func (l *Light) Discard() (int, error) {
	total := l.br.Buffered()
	l.br.Discard(total)
	sc, ok := l.conn.(syscall.Conn)
	if !ok {
		return total, errors.New("hubtest: the connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return total, err
	}
	var scratch [4096]byte
	for {
		var n int
		var rerr error
		// The descriptor is non-blocking (the runtime's poller owns it):
		// one read, whatever it returns, and no wait for readiness.
		if err := raw.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), scratch[:])
			return true
		}); err != nil {
			return total, err
		}
		switch {
		case rerr == syscall.EAGAIN:
			return total, nil
		case rerr != nil:
			return total, rerr
		case n == 0:
			return total, io.EOF
		}
		total += n
	}
}

// Close closes the connection without a close handshake. It may be called
// from any goroutine, and more than once.
func (l *Light) Close() error { return l.conn.Close() }
