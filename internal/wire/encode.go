package wire

import (
	"encoding/json"
	"strconv"
)

// AppendMessage appends a message object for room carrying data, with its
// offset when offset is not 0 (history on). room must be a valid room name
// (it needs no escaping) and data JSON with no newline.
func AppendMessage(dst []byte, room string, offset uint64, data []byte) []byte {
	dst = append(dst, `{"type":"message","room":"`...)
	dst = append(dst, room...)
	if offset != 0 {
		dst = append(dst, `","offset":`...)
		dst = strconv.AppendUint(dst, offset, 10)
		dst = append(dst, `,"data":`...)
	} else {
		dst = append(dst, `","data":`...)
	}
	dst = append(dst, data...)
	return append(dst, '}')
}

// MessageLen is at least the length AppendMessage adds for room, offset and data.
func MessageLen(room string, offset uint64, data []byte) int {
	n := len(`{"type":"message","room":"","data":}`) + len(room) + len(data)
	if offset != 0 {
		n += len(`,"offset":`) + 20
	}
	return n
}

// AppendAck appends an ack object for id.
func AppendAck(dst []byte, id []byte) []byte {
	dst = append(dst, `{"type":"ack","id":`...)
	dst = append(dst, id...)
	return append(dst, '}')
}

// Position is where a room's history stands: its epoch and its latest offset.
type Position struct {
	Epoch  string
	Offset uint64
}

// AppendSubscribeAck appends the ack of a subscribe: the room, where its
// history stands (when history is on: pos.Epoch is not empty), and, when the
// subscribe asked to recover (recovered not nil), whether it did.
func AppendSubscribeAck(dst []byte, id []byte, room string, pos Position, recovered *bool) []byte {
	dst = append(dst, `{"type":"ack","id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"room":"`...)
	dst = append(dst, room...)
	dst = append(dst, '"')
	if pos.Epoch != "" {
		dst = append(dst, `,"epoch":`...)
		dst = strconv.AppendQuote(dst, pos.Epoch)
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, pos.Offset, 10)
	}
	if recovered != nil {
		dst = append(dst, `,"recovered":`...)
		dst = strconv.AppendBool(dst, *recovered)
	}
	return append(dst, '}')
}

// AppendPublishAck appends the ack of a publish, with the message's offset
// when history is on (offset not 0).
func AppendPublishAck(dst []byte, id []byte, offset uint64) []byte {
	if offset == 0 {
		return AppendAck(dst, id)
	}
	dst = append(dst, `{"type":"ack","id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
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

// AppendGap appends a gap object for room: messages to it may have been lost.
func AppendGap(dst []byte, room string) []byte {
	dst = append(dst, `{"type":"gap","room":"`...)
	dst = append(dst, room...)
	return append(dst, `"}`...)
}

// AppendUnsubscribed appends an unsubscribed object: the server took the
// client out of room, for the reason given (a narrowed token, an operator).
func AppendUnsubscribed(dst []byte, room, code, reason string) []byte {
	dst = append(dst, `{"type":"unsubscribed","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","code":`...)
	dst = strconv.AppendQuote(dst, code)
	dst = append(dst, `,"message":`...)
	msg, _ := json.Marshal(reason)
	dst = append(dst, msg...)
	return append(dst, '}')
}
