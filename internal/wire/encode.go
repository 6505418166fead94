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

// Member is one connection's entry in a room's presence (v1.1).
type Member struct {
	Client, User, Node string
}

// appendString appends s as a JSON string.
func appendString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return append(dst, b...)
}

func appendMember(dst []byte, m Member) []byte {
	dst = append(dst, `"client":`...)
	dst = appendString(dst, m.Client)
	dst = append(dst, `,"user":`...)
	dst = appendString(dst, m.User)
	dst = append(dst, `,"node":`...)
	return appendString(dst, m.Node)
}

// AppendPresence appends the reply to a presence request: room's member
// count and at most the members listed (id may be empty).
func AppendPresence(dst []byte, id []byte, room string, count int, members []Member) []byte {
	dst = append(dst, `{"type":"presence",`...)
	if len(id) > 0 {
		dst = append(dst, `"id":`...)
		dst = append(dst, id...)
		dst = append(dst, ',')
	}
	dst = append(dst, `"room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","count":`...)
	dst = strconv.AppendInt(dst, int64(count), 10)
	dst = append(dst, `,"members":[`...)
	for i, m := range members {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		dst = appendMember(dst, m)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// AppendPresenceEvent appends a join (leave false) or leave object of room.
func AppendPresenceEvent(dst []byte, leave bool, room string, m Member) []byte {
	if leave {
		dst = append(dst, `{"type":"leave","room":"`...)
	} else {
		dst = append(dst, `{"type":"join","room":"`...)
	}
	dst = append(dst, room...)
	dst = append(dst, `",`...)
	dst = appendMember(dst, m)
	return append(dst, '}')
}
