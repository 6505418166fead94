// Package pubsub carries room messages between hubcluster nodes, and keeps
// each room's recent history.
//
// Two brokers implement the same surface: Memory, the embedded default for a
// single node with no Redis, and Redis, which fans messages out between
// replicas. With history on (HistorySize > 0) every message published to a
// room is stored where it gets its offset: the next one of that room (1, 2,
// 3, ...) within an epoch that names the history's lifetime. The offset a
// node sees on the live path is exactly the one stored, so a node or a client
// that missed a range can read it back (History) and tell a hole from a
// duplicate. With history off a broker is a plain pipe, at-most-once.
package pubsub

import (
	"context"
	"errors"
	"fmt"
)

// Message is one room message as a broker carries it.
type Message struct {
	Room string
	// Epoch names the room history's lifetime; Offset is the message's place
	// in it, from 1. Both are zero with history off.
	Epoch  string
	Offset uint64
	// Origin is the publishing node's origin id (history off only: with
	// history on, offsets tell duplicates apart).
	Origin string
	// Data is the message's JSON, with no newline in it.
	Data []byte
}

// Sink receives what a broker brings in from the cluster. Its methods are
// called from the broker's receive loop and must not block.
type Sink interface {
	// Deliver hands over one message published to a room this node is
	// subscribed to. Messages of one room arrive in the order the broker
	// stored them.
	Deliver(m Message)
	// Resync reports rooms whose messages may have been missed: the
	// subscription was lost (a reconnect, a subscription that went silent)
	// and is live again. With history on the receiver reads the missed range
	// back; with history off it can only tell its members.
	Resync(rooms []string)
}

// Publication is a message to publish.
type Publication struct {
	Room string
	Data []byte // JSON with no newline
	// IdempotencyKey, when set, makes a second publication with the same key
	// to the same room, within the history TTL, a duplicate: it is neither
	// stored nor delivered again, and gets the first one's receipt.
	IdempotencyKey string
}

// Receipt is what a broker answers to a publication it took.
type Receipt struct {
	Epoch     string // with history on
	Offset    uint64 // with history on
	Duplicate bool   // the idempotency key was seen before: nothing was published
}

// History is a read of a room's stored messages.
type History struct {
	Epoch string
	// Top is the room's latest offset (0: nothing published in this epoch).
	Top uint64
	// Messages are the stored messages after the offset asked for, oldest
	// first. The oldest kept may be later than asked: the ones between are
	// gone (trimmed to the history size, or expired).
	Messages []Message
}

// Errors a publication may end with. Both wrap the cause.
var (
	// ErrUnavailable: the publication was certainly not handed on (the
	// broker is unreachable, not ready, or overloaded). Retrying is safe.
	ErrUnavailable = errors.New("pubsub: unavailable")
	// ErrUncertain: the publication was sent, but the broker did not confirm
	// it in time; it may or may not be delivered. Retry with the same
	// idempotency key.
	ErrUncertain = errors.New("pubsub: outcome unknown")
)

// ErrClosed is returned by a broker that has been closed.
var ErrClosed = errors.New("pubsub: broker closed")

// ErrNoHistory is returned by Position and History with history off.
var ErrNoHistory = errors.New("pubsub: history is off")

// Broker is what every broker offers; the hub declares the part it uses.
type Broker interface {
	Publish(p Publication, done func(Receipt, error))
	Subscribe(room string)
	Unsubscribe(room string)
	Subscribed(room string) bool
	WaitSubscribed(ctx context.Context, room string) error
	Position(ctx context.Context, room string) (epoch string, top uint64, err error)
	History(ctx context.Context, room string, after uint64, limit int) (History, error)
	Run(ctx context.Context, sink Sink) error
	StopSubscriptions(ctx context.Context) error
	Ready() error
	Close() error

	// Presence, and LeaveCluster: remove this node's presence before Close.
	Join(room string, m Member)
	Leave(room string, m Member)
	Watch(room string)
	Unwatch(room string)
	Members(ctx context.Context, room string, limit int) (int, []Member, error)
	Rooms(ctx context.Context, after string, limit int) ([]RoomCount, error)
	Nodes(ctx context.Context) ([]NodeInfo, error)
	Command(ctx context.Context, c Command) error
	LeaveCluster(ctx context.Context) error
}

var (
	_ Broker = (*Memory)(nil)
	_ Broker = (*Redis)(nil)
)

// unavailable wraps err as ErrUnavailable.
func unavailable(err error) error { return fmt.Errorf("%w: %w", ErrUnavailable, err) }

// uncertain wraps err as ErrUncertain.
func uncertain(err error) error { return fmt.Errorf("%w: %w", ErrUncertain, err) }
