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
