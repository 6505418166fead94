package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// Request is one decoded client object.
type Request struct {
	Type string
	Room string
	// ID is the raw JSON of the optional id (a string or a number), nil when absent.
	ID []byte
	// Data is the raw JSON of a publish's data, with no newline in it.
	Data []byte
	// Token is an auth request's token.
	Token string
	// Since, on a subscribe, asks for the messages after an offset (v1.1).
	Since *Since
	// Presence, on a subscribe, asks for join and leave events (v1.1).
	Presence bool
	// IdempotencyKey, on a publish, makes a retry deliver the message once (v1.1).
	IdempotencyKey string
}

// Since is the position a recovering subscriber has reached in a room.
type Since struct {
	Offset uint64
	Epoch  string
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

// The fields a request may carry, as bits of a seen-set.
const (
	fType = 1 << iota
	fRoom
	fID
	fData
	fToken
	fSince
	fPresence
	fIdemKey
)

var fieldBits = map[string]int{
	"type": fType, "room": fRoom, "id": fID, "data": fData, "token": fToken,
	"since": fSince, "presence": fPresence, "idempotency_key": fIdemKey,
}

// rawRequest holds the raw values of the known fields of one object.
type rawRequest struct {
	seen                              int
	typ, room, id, data, token, since []byte
	presence, idemKey                 []byte
}

func (r *rawRequest) set(bit int, v []byte) {
	r.seen |= bit
	switch bit {
	case fType:
		r.typ = v
	case fRoom:
		r.room = v
	case fID:
		r.id = v
	case fData:
		r.data = v
	case fToken:
		r.token = v
	case fSince:
		r.since = v
	case fPresence:
		r.presence = v
	case fIdemKey:
		r.idemKey = v
	}
}

// Decode parses one client object strictly: keys match exactly, a key given
// twice is an error, and each field must have the JSON type the protocol
// gives it; unknown keys are ignored (later versions may add fields). A
// failure is always an *Error, carrying the request's id whenever the id
// itself could be read.
func Decode(line []byte) (Request, error) {
	var raw rawRequest
	var dup string // the first key given twice
	if err := scanObject(line, func(key, val []byte) *Error {
		bit, known := fieldBits[string(key)]
		if !known {
			return nil
		}
		if raw.seen&bit != 0 {
			if dup == "" {
				dup = string(key)
			}
			return nil
		}
		raw.set(bit, val)
		return nil
	}); err != nil {
		return Request{}, err
	}
	var req Request
	if raw.seen&fID != 0 && dup != "id" && validID(raw.id) {
		req.ID = raw.id
	}
	if dup != "" {
		return Request{}, &Error{Code: CodeBadRequest, Message: "duplicate key " + strconv.Quote(dup), ID: req.ID}
	}
	if raw.seen&fID != 0 && req.ID == nil {
		return Request{}, &Error{Code: CodeBadRequest, Message: "id must be a string or a number"}
	}
	fail := func(code, msg string) (Request, error) {
		return req, &Error{Code: code, Message: msg, ID: req.ID}
	}
	if raw.seen&fType == 0 {
		return fail(CodeBadRequest, "missing type")
	}
	typ, ok := jsonString(raw.typ)
	if !ok {
		return fail(CodeBadRequest, "type must be a string")
	}
	req.Type = typ
	switch typ {
	case TypeSubscribe, TypeUnsubscribe, TypePublish, TypePresence:
	case TypeAuth:
		tok, ok := jsonString(raw.token)
		if raw.seen&fToken == 0 || !ok || tok == "" {
			return fail(CodeBadRequest, "auth needs a token (a non-empty string)")
		}
		req.Token = tok
		return req, nil
	default:
		return fail(CodeBadRequest, "unknown type "+strconv.Quote(truncate(typ, 32)))
	}
	if raw.seen&fRoom == 0 {
		return fail(CodeBadRoom, "missing room")
	}
	room, ok := jsonString(raw.room)
	if !ok {
		return fail(CodeBadRequest, "room must be a string")
	}
	if err := ValidateRoom(room); err != nil {
		return fail(CodeBadRoom, err.Error())
	}
	req.Room = room
	switch typ {
	case TypePublish:
		if raw.seen&fData == 0 {
			return fail(CodeBadRequest, "publish needs data")
		}
		req.Data = raw.data
		if raw.seen&fIdemKey != 0 {
			key, ok := jsonString(raw.idemKey)
			if !ok {
				return fail(CodeBadRequest, "idempotency_key must be a string")
			}
			if err := ValidateIdempotencyKey(key); err != nil {
				return fail(CodeBadRequest, err.Error())
			}
			req.IdempotencyKey = key
		}
	case TypeSubscribe:
		if raw.seen&fSince != 0 {
			s, err := decodeSince(raw.since)
			if err != nil {
				return fail(CodeBadRequest, err.Error())
			}
			req.Since = s
		}
		if raw.seen&fPresence != 0 {
			switch string(raw.presence) {
			case "true":
				req.Presence = true
			case "false":
			default:
				return fail(CodeBadRequest, "presence must be true or false")
			}
		}
	}
	return req, nil
}

// decodeSince parses {"offset": N, "epoch": "E"} strictly.
func decodeSince(val []byte) (*Since, error) {
	if len(val) == 0 || val[0] != '{' {
		return nil, fmt.Errorf(`since must be an object {"offset":N,"epoch":"E"}`)
	}
	var s Since
	var seen int
	err := scanObject(val, func(key, v []byte) *Error {
		switch string(key) {
		case "offset":
			if seen&1 != 0 {
				return &Error{Code: CodeBadRequest, Message: `duplicate key "offset" in since`}
			}
			seen |= 1
			n, err := strconv.ParseUint(string(v), 10, 63)
			if err != nil {
				return &Error{Code: CodeBadRequest, Message: "since.offset must be a whole number from 0"}
			}
			s.Offset = n
		case "epoch":
			if seen&2 != 0 {
				return &Error{Code: CodeBadRequest, Message: `duplicate key "epoch" in since`}
			}
			seen |= 2
			e, ok := jsonString(v)
			if !ok || len(e) > 64 {
				return &Error{Code: CodeBadRequest, Message: "since.epoch must be a string of at most 64 characters"}
			}
			s.Epoch = e
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if seen != 3 {
		return nil, fmt.Errorf("since needs both offset and epoch")
	}
	return &s, nil
}

// scanObject calls fn with each key and raw value of the JSON object in line,
// in order. Anything but one well-formed object (with nothing after it but
// whitespace) is a bad_request; so is an object key that is not valid UTF-8
// JSON text.
func scanObject(line []byte, fn func(key, val []byte) *Error) *Error {
	if !json.Valid(line) {
		return &Error{Code: CodeBadRequest, Message: "malformed JSON object"}
	}
	// line is valid JSON from here on: the scan can be simple.
	i := skipSpace(line, 0)
	if i >= len(line) || line[i] != '{' {
		return &Error{Code: CodeBadRequest, Message: "a request must be a JSON object"}
	}
	i = skipSpace(line, i+1)
	if line[i] == '}' {
		return nil
	}
	for {
		end := skipString(line, i)
		key := line[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			json.Unmarshal(line[i:end], &k) // valid JSON: cannot fail
			key = []byte(k)
		}
		i = skipSpace(line, end)
		i = skipSpace(line, i+1) // the ':'
		vend := skipValue(line, i)
		if err := fn(key, line[i:vend]); err != nil {
			return err
		}
		i = skipSpace(line, vend)
		if line[i] == '}' {
			return nil
		}
		i = skipSpace(line, i+1) // the ','
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i] ('"').
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the value that starts at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default: // number, true, false, null
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\r' && b[j] != '\n' {
			j++
		}
		return j
	}
}

// jsonString returns the string a raw JSON string value holds; ok is false
// when raw is not a JSON string.
func jsonString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// validID reports whether raw is a JSON string or number.
func validID(raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	switch c := raw[0]; {
	case c == '"':
		return true
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

// ValidateIdempotencyKey reports whether key is a legal idempotency_key: 1 to
// 128 printable ASCII characters.
func ValidateIdempotencyKey(key string) error {
	if len(key) == 0 || len(key) > MaxIdempotencyKeyLen {
		return fmt.Errorf("idempotency_key must be 1 to %d characters", MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Errorf("idempotency_key must be printable ASCII without spaces")
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

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// PublishBody is the body of POST /v1/publish.
type PublishBody struct {
	Room           string
	Data           []byte // compact JSON
	IdempotencyKey string
}

// DecodePublishBody parses a POST /v1/publish body as strictly as Decode
// parses a request: one JSON object with nothing after it, exact and unique
// keys, a valid room, data present. Data is compacted.
func DecodePublishBody(body []byte) (PublishBody, *Error) {
	var b PublishBody
	var seen int
	var room, data, key []byte
	err := scanObject(body, func(k, v []byte) *Error {
		bit := 0
		switch string(k) {
		case "room":
			bit, room = 1, v
		case "data":
			bit, data = 2, v
		case "idempotency_key":
			bit, key = 4, v
		default:
			return nil
		}
		if seen&bit != 0 {
			return &Error{Code: CodeBadRequest, Message: "duplicate key " + strconv.Quote(string(k))}
		}
		seen |= bit
		return nil
	})
	if err != nil {
		if err.Message == "malformed JSON object" || err.Message == "a request must be a JSON object" {
			err.Message = `body is not one JSON object {"room":...,"data":...}`
		}
		return b, err
	}
	if seen&1 == 0 {
		return b, &Error{Code: CodeBadRoom, Message: "missing room"}
	}
	r, ok := jsonString(room)
	if !ok {
		return b, &Error{Code: CodeBadRequest, Message: "room must be a string"}
	}
	if err := ValidateRoom(r); err != nil {
		return b, &Error{Code: CodeBadRoom, Message: err.Error()}
	}
	b.Room = r
	if seen&2 == 0 {
		return b, &Error{Code: CodeBadRequest, Message: "missing data"}
	}
	var compact bytes.Buffer
	json.Compact(&compact, data) // valid JSON: cannot fail
	b.Data = compact.Bytes()
	if seen&4 != 0 {
		k, ok := jsonString(key)
		if !ok {
			return b, &Error{Code: CodeBadRequest, Message: "idempotency_key must be a string"}
		}
		if err := ValidateIdempotencyKey(k); err != nil {
			return b, &Error{Code: CodeBadRequest, Message: err.Error()}
		}
		b.IdempotencyKey = k
	}
	return b, nil
}
