// Package wire implements hubcluster's wire protocol (v1.1): the JSON objects a
// client sends and receives over /ws, the error and close codes, and the
// reconnect hint of a drain. docs/protocol.md is the contract this package
// implements; a protocol fact lives here once.
//
// A WebSocket text frame holds one or more objects separated by '\n'.
// Decoding is strict (exact keys, no duplicate key, every field of the type
// the protocol gives it) and copies nothing it does not have to: a Request's
// Data and ID are slices of the frame they came from and are valid only as
// long as that frame is. Encoding appends to a caller's buffer, so the fan-out
// path can build a message once and share it between every recipient.
package wire

// Version is the protocol version this package speaks.
const Version = "1.1"

// Request types a client may send.
const (
	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	TypePublish     = "publish"
	TypeAuth        = "auth"
	TypePresence    = "presence"
)

// Error codes of an error reply (docs/protocol.md lists them).
const (
	CodeBadRequest    = "bad_request"
	CodeBadRoom       = "bad_room"
	CodeNotSubscribed = "not_subscribed"
	CodeForbidden     = "forbidden"
	CodeTooLarge      = "too_large"
	CodeRateLimited   = "rate_limited"
	// CodeUnavailable: the request was certainly not carried out (the broker
	// is unreachable or the node is overloaded); retrying is safe.
	CodeUnavailable = "unavailable"
	// CodeTimeout: the broker did not confirm a publish in time; it may or may
	// not be delivered. Retry with the same idempotency_key.
	CodeTimeout = "timeout"
)

// MaxRoomLen is the longest room name.
const MaxRoomLen = 128

// MaxIdempotencyKeyLen is the longest idempotency_key.
const MaxIdempotencyKeyLen = 128

// Error is a request that failed; it becomes an error reply and the connection
// stays open.
type Error struct {
	Code    string
	Message string
	// ID is the id of the failed request, when it could be read.
	ID []byte
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorFor returns an *Error with code and message for the request id.
func ErrorFor(id []byte, code, message string) *Error {
	return &Error{Code: code, Message: message, ID: id}
}
