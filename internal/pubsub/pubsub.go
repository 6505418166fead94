// Package pubsub carries room messages between hubcluster nodes.
//
// Two brokers implement the same small surface: Memory, the embedded default for
// a single node with no Redis, and Redis, which fans messages out between
// replicas. A broker is a byte pipe: the payload it is given is the payload it
// delivers to the other nodes' Sinks, unchanged.
package pubsub

import "errors"

// Sink receives what a broker brings in from other nodes. Its methods are called
// from the broker's receive loop and must not block.
type Sink interface {
	// Deliver hands over one payload published to room.
	Deliver(room string, payload string)
	// Gap reports rooms whose messages may have been lost (a reconnect, a
	// subscription that went silent).
	Gap(rooms []string)
}

// ErrClosed is returned by a broker that has been closed.
var ErrClosed = errors.New("pubsub: broker closed")
