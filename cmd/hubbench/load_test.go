package main

import (
	"testing"
	"time"
)

// Each connection's counts go into the result once, whether or not it is
// both a member and a publisher.
func TestCollectCountsEachConnectionOnce(t *testing.T) {
	newConn := func(errors, received int64) *conn {
		c := &conn{errors: errors, received: received, lat: newHist()}
		for range received {
			c.lat.add(time.Millisecond)
		}
		return c
	}
	// Members m0 and m1 publish (MembersPublish); m2 and m3 do not. p is an
	// extra publisher, in no room.
	m0, m1, m2, m3, p := newConn(3, 10), newConn(1, 10), newConn(0, 10), newConn(5, 10), newConn(2, 0)
	tests := []struct {
		name           string
		members, pubs  []*conn
		errors, recvd  int64
		conns, latency int
	}{
		{"members publish", []*conn{m0, m1, m2, m3}, []*conn{m0, m1}, 9, 40, 4, 40},
		{"extra publishers", []*conn{m1, m2, m3}, []*conn{p}, 8, 30, 4, 30},
		{"no publishers", []*conn{m3}, nil, 5, 10, 1, 10},
	}
	for _, tt := range tests {
		res := newResult()
		all := collect(res, tt.members, tt.pubs)
		if res.Errors != tt.errors {
			t.Errorf("%s: got %d errors, want %d", tt.name, res.Errors, tt.errors)
		}
		if res.Received != tt.recvd {
			t.Errorf("%s: got %d received, want %d", tt.name, res.Received, tt.recvd)
		}
		if res.Latency.N != uint64(tt.latency) {
			t.Errorf("%s: got %d latency samples, want %d", tt.name, res.Latency.N, tt.latency)
		}
		if len(all) != tt.conns {
			t.Errorf("%s: got %d connections, want %d", tt.name, len(all), tt.conns)
		}
	}
}
