package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
)

// clientIP is the address a request comes from: the peer's, or, when the peer
// is a trusted proxy, the rightmost address in X-Forwarded-For that is not a
// trusted proxy. A forged header from an untrusted peer changes nothing.
func clientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	peer = peer.Unmap()
	if !isTrusted(peer, trusted) {
		return peer
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	ip := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a garbled hop: trust nothing left of it
		}
		ip = a.Unmap()
		if !isTrusted(ip, trusted) {
			return ip
		}
	}
	return ip
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// connLimits counts open WebSocket connections, in all and per client IP.
type connLimits struct {
	max, maxPerIP int // 0: no limit

	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

// acquire takes a slot for ip and returns the HTTP status to refuse with, or
// 0. A taken slot is given back with release.
func (l *connLimits) acquire(ip netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max {
		return http.StatusServiceUnavailable
	}
	if l.maxPerIP > 0 && l.perIP[ip] >= l.maxPerIP {
		return http.StatusTooManyRequests
	}
	l.total++
	if l.maxPerIP > 0 {
		if l.perIP == nil {
			l.perIP = make(map[netip.Addr]int)
		}
		l.perIP[ip]++
	}
	return 0
}

func (l *connLimits) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.maxPerIP > 0 {
		if l.perIP[ip]--; l.perIP[ip] <= 0 {
			delete(l.perIP, ip)
		}
	}
}

// httpConns counts the connections the HTTP server holds that are not
// WebSockets, in all and per peer address, as http.Server.ConnState reports
// them: a connection is counted from StateNew until it is hijacked (it became
// a WebSocket, which connLimits counts) or closed. Peers in exempt (trusted
// proxies, which carry many clients) have no per-address share.
type httpConns struct {
	max, maxPerIP int // 0: no limit
	exempt        []netip.Prefix

	mu    sync.Mutex
	open  map[net.Conn]netip.Addr // the counted connections and their peers
	perIP map[netip.Addr]int
}

// Reasons a connection is refused.
const (
	refusedHTTPTotal = "max_http_connections"
	refusedHTTPPerIP = "max_http_connections_per_ip"
)

func newHTTPConns(max, maxPerIP int, exempt []netip.Prefix) *httpConns {
	return &httpConns{max: max, maxPerIP: maxPerIP, exempt: exempt,
		open: make(map[net.Conn]netip.Addr), perIP: make(map[netip.Addr]int)}
}

// admit counts c and returns "", or the reason it is refused, uncounted.
func (l *httpConns) admit(c net.Conn, peer netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && len(l.open) >= l.max {
		return refusedHTTPTotal
	}
	shared := l.maxPerIP > 0 && !isTrusted(peer, l.exempt)
	if shared && l.perIP[peer] >= l.maxPerIP {
		return refusedHTTPPerIP
	}
	l.open[c] = peer
	l.perIP[peer]++
	return ""
}

// done stops counting c; a connection never counted is ignored.
func (l *httpConns) done(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	peer, ok := l.open[c]
	if !ok {
		return
	}
	delete(l.open, c)
	if l.perIP[peer]--; l.perIP[peer] <= 0 {
		delete(l.perIP, peer)
	}
}

func (l *httpConns) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.open)
}

// peerAddr is the address c comes from (the socket's peer: nothing of the
// request has been read yet).
func peerAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
