// Package wire implements hubcluster's wire protocol v1: the JSON objects a client
// sends and receives over /ws. A WebSocket text frame holds one or more objects
// separated by '\n'.
//
// Decoding copies nothing it does not have to: a Request's Data and ID are slices
// of the frame they came from and are valid only as long as that frame is.
// Encoding appends to a caller's buffer, so the fan-out path can build a message
// once and share it between every recipient.
package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// Request types a client may send.
const (
	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	TypePublish     = "publish"
	TypeAuth        = "auth"
)

// Error codes of an error reply, as DESIGN.md lists them.
const (
	CodeBadRequest    = "bad_request"
	CodeBadRoom       = "bad_room"
	CodeNotSubscribed = "not_subscribed"
	CodeForbidden     = "forbidden"
	CodeTooLarge      = "too_large"
	CodeRateLimited   = "rate_limited"
	CodeUnavailable   = "unavailable"
)

// MaxRoomLen is the longest room name.
const MaxRoomLen = 128

// Request is one decoded client object.
type Request struct {
	Type string
	Room string
	// ID is the raw JSON of the optional id (a string or a number), nil when absent.
	ID json.RawMessage
	// Data is the raw, compact JSON of a publish's data.
	Data json.RawMessage
	// Token is an auth request's token.
	Token string
}

// Error is a request that failed; it becomes an error reply and the connection
// stays open.
type Error struct {
	Code    string
	Message string
	// ID is the id of the failed request, when it could be read.
	ID json.RawMessage
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorFor returns an *Error with code and message for the request id.
func ErrorFor(id json.RawMessage, code, message string) *Error {
	return &Error{Code: code, Message: message, ID: id}
}

type rawRequest struct {
	Type  string          `json:"type"`
	Room  *string         `json:"room"`
	ID    json.RawMessage `json:"id"`
	Data  json.RawMessage `json:"data"`
	Token *string         `json:"token"`
}

// Split calls fn for every non-empty line of frame, in order, and stops at the
// first error fn returns.
func Split(frame []byte, fn func(line []byte) error) error {
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if err := fn(line); err != nil {
			return err
		}
	}
	return nil
}

// Decode parses one client object. A failure is always an *Error.
func Decode(line []byte) (Request, error) {
	var raw rawRequest
	if err := json.Unmarshal(line, &raw); err != nil {
		return Request{}, &Error{Code: CodeBadRequest, Message: "malformed JSON object"}
	}
	req := Request{Type: raw.Type, ID: raw.ID, Data: raw.Data}
	if len(raw.ID) > 0 {
		if !validID(raw.ID) {
			return Request{}, &Error{Code: CodeBadRequest, Message: "id must be a string or a number"}
		}
	}
	switch raw.Type {
	case TypeSubscribe, TypeUnsubscribe, TypePublish:
	case TypeAuth:
		if raw.Token == nil || *raw.Token == "" {
			return req, &Error{Code: CodeBadRequest, Message: "auth needs a token", ID: req.ID}
		}
		req.Token = *raw.Token
		req.Data = nil
		return req, nil
	case "":
		return req, &Error{Code: CodeBadRequest, Message: "missing type", ID: req.ID}
	default:
		return req, &Error{Code: CodeBadRequest, Message: "unknown type " + strconv.Quote(truncate(raw.Type, 32)), ID: req.ID}
	}
	if raw.Room == nil {
		return req, &Error{Code: CodeBadRoom, Message: "missing room", ID: req.ID}
	}
	if err := ValidateRoom(*raw.Room); err != nil {
		return req, &Error{Code: CodeBadRoom, Message: err.Error(), ID: req.ID}
	}
	req.Room = *raw.Room
	if raw.Type == TypePublish {
		if len(raw.Data) == 0 {
			return req, &Error{Code: CodeBadRequest, Message: "publish needs data", ID: req.ID}
		}
		// A line holds no raw newline, so Data is already newline-free; it is not
		// compacted further, to keep the hot path free of copies.
	} else {
		req.Data = nil
	}
	return req, nil
}

// validID reports whether raw is a JSON string or number.
func validID(raw json.RawMessage) bool {
	switch c := raw[0]; {
	case c == '"':
		return true // json.Unmarshal already checked it is well formed
	case c == '-' || (c >= '0' && c <= '9'):
		return true
	default:
		return false
	}
}

// ValidateRoom reports whether name is a legal room name: 1 to 128 characters
// of A-Z a-z 0-9 _ . : -.
func ValidateRoom(name string) error {
	if len(name) == 0 {
		return fmt.Errorf("room name is empty")
	}
	if len(name) > MaxRoomLen {
		return fmt.Errorf("room name is longer than %d characters", MaxRoomLen)
	}
	for i := 0; i < len(name); i++ {
		if !roomChar[name[i]] {
			return fmt.Errorf("room name has a character outside A-Z a-z 0-9 _ . : -")
		}
	}
	return nil
}

var roomChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_.:-" {
		t[c] = true
	}
	return t
}()

// AppendMessage appends a message object for room carrying data. room must be a
// valid room name (it needs no escaping) and data compact JSON with no newline.
func AppendMessage(dst []byte, room string, data []byte) []byte {
	dst = append(dst, `{"type":"message","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}

// MessageLen is the length AppendMessage adds for room and data.
func MessageLen(room string, data []byte) int {
	return len(`{"type":"message","room":"","data":}`) + len(room) + len(data)
}

// AppendAck appends an ack object for id.
func AppendAck(dst []byte, id json.RawMessage) []byte {
	dst = append(dst, `{"type":"ack","id":`...)
	dst = append(dst, id...)
	return append(dst, '}')
}

// AppendError appends an error object for e.
func AppendError(dst []byte, e *Error) []byte {
	dst = append(dst, `{"type":"error",`...)
	if len(e.ID) > 0 {
		dst = append(dst, `"id":`...)
		dst = append(dst, e.ID...)
		dst = append(dst, ',')
	}
	dst = append(dst, `"code":`...)
	dst = strconv.AppendQuote(dst, e.Code)
	dst = append(dst, `,"message":`...)
	msg, _ := json.Marshal(e.Message) // a string always marshals
	dst = append(dst, msg...)
	return append(dst, '}')
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// AppendGap appends a gap object for room: messages to it may have been lost.
func AppendGap(dst []byte, room string) []byte {
	dst = append(dst, `{"type":"gap","room":"`...)
	dst = append(dst, room...)
	return append(dst, `"}`...)
}
