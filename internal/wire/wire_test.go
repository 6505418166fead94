package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		line     string
		wantType string
		wantRoom string
		wantID   string
		wantData string
		wantCode string
	}{
		{line: `{"type":"subscribe","room":"chat:1","id":1}`, wantType: "subscribe", wantRoom: "chat:1", wantID: "1"},
		{line: `{"type":"unsubscribe","room":"a.b_c-d"}`, wantType: "unsubscribe", wantRoom: "a.b_c-d"},
		{line: `{"type":"publish","room":"r","data":{"a":[1,2]},"id":"x"}`, wantType: "publish", wantRoom: "r", wantID: `"x"`, wantData: `{"a":[1,2]}`},
		{line: `{"type":"publish","room":"r","data":null}`, wantType: "publish", wantRoom: "r", wantData: "null"},
		{line: ` { "type" : "publish" , "room" : "r" , "data" : [ 1 , "}" ] } `, wantType: "publish", wantRoom: "r", wantData: `[ 1 , "}" ]`},
		{line: `{"type":"subscribe","room":"r","extra":true}`, wantType: "subscribe", wantRoom: "r"},
		{line: `{"\u0074ype":"subscribe","room":"r"}`, wantType: "subscribe", wantRoom: "r"},
		{line: `{"type":"publish","room":"r"}`, wantCode: CodeBadRequest},
		{line: `{"type":"publish","room":"r","data":1,"id":[1]}`, wantCode: CodeBadRequest},
		{line: `{"type":"nope","room":"r"}`, wantCode: CodeBadRequest},
		{line: `{"room":"r"}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe"}`, wantCode: CodeBadRoom},
		{line: `{"type":"subscribe","room":1}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"a/b"}`, wantCode: CodeBadRoom},
		{line: `{"type":"subscribe","room":"` + strings.Repeat("r", 128) + `"}`, wantType: "subscribe", wantRoom: strings.Repeat("r", 128)},
		{line: `{"type":"subscribe","room":"` + strings.Repeat("r", 129) + `"}`, wantCode: CodeBadRoom},
		{line: `not json`, wantCode: CodeBadRequest},
		{line: `[1,2]`, wantCode: CodeBadRequest},
		{line: `"subscribe"`, wantCode: CodeBadRequest},
		{line: `{"type":"auth","token":"abc","id":3}`, wantType: "auth", wantID: "3"},
		{line: `{"type":"auth"}`, wantCode: CodeBadRequest},
		{line: `{"type":"auth","token":""}`, wantCode: CodeBadRequest},
		{line: `{"type":"auth","token":5}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r"} trailing`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r"}{}`, wantCode: CodeBadRequest},
		// Keys match exactly: "Type" and "ROOM" are unknown keys, ignored.
		{line: `{"Type":"subscribe","room":"r","id":1}`, wantCode: CodeBadRequest, wantID: "1"},
		{line: `{"type":"subscribe","ROOM":"r","id":1}`, wantCode: CodeBadRoom, wantID: "1"},
		// A duplicate key is an error, never last-wins; the id is kept.
		{line: `{"type":"subscribe","room":"a","room":"b","id":2}`, wantCode: CodeBadRequest, wantID: "2"},
		{line: `{"type":"subscribe","type":"publish","room":"a","data":1}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"a","id":1,"id":2}`, wantCode: CodeBadRequest},
		// A field of the wrong JSON type keeps the request's id in the error.
		{line: `{"type":"subscribe","room":["r"],"id":"k"}`, wantCode: CodeBadRequest, wantID: `"k"`},
		{line: `{"type":7,"room":"r","id":8}`, wantCode: CodeBadRequest, wantID: "8"},
		{line: `{"type":"publish","room":"r","data":1,"idempotency_key":5,"id":9}`, wantCode: CodeBadRequest, wantID: "9"},
		{line: `{"type":"publish","room":"r","data":1,"idempotency_key":"","id":9}`, wantCode: CodeBadRequest, wantID: "9"},
		{line: `{"type":"publish","room":"r","data":1,"idempotency_key":"has space"}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r","presence":"yes","id":1}`, wantCode: CodeBadRequest, wantID: "1"},
		{line: `{"type":"subscribe","room":"r","since":5,"id":1}`, wantCode: CodeBadRequest, wantID: "1"},
		{line: `{"type":"subscribe","room":"r","since":{"offset":-1,"epoch":"e"}}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r","since":{"offset":1.5,"epoch":"e"}}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r","since":{"offset":1}}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r","since":{"offset":1,"epoch":"e","offset":2}}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r","since":{"Offset":1,"epoch":"e"}}`, wantCode: CodeBadRequest},
	}
	for _, tt := range tests {
		req, err := Decode([]byte(tt.line))
		if tt.wantCode != "" {
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("Decode(%s): got error %v, want code %s", tt.line, err, tt.wantCode)
				continue
			}
			if e.Code != tt.wantCode || string(e.ID) != tt.wantID {
				t.Errorf("Decode(%s): got code %s id %s, want %s id %s", tt.line, e.Code, e.ID, tt.wantCode, tt.wantID)
			}
			continue
		}
		if err != nil {
			t.Errorf("Decode(%s): got error %v, want none", tt.line, err)
			continue
		}
		if req.Type != tt.wantType || req.Room != tt.wantRoom || string(req.ID) != tt.wantID || string(req.Data) != tt.wantData {
			t.Errorf("Decode(%s): got %q %q id=%s data=%s, want %q %q id=%s data=%s", tt.line,
				req.Type, req.Room, req.ID, req.Data, tt.wantType, tt.wantRoom, tt.wantID, tt.wantData)
		}
	}
}

func TestDecodeV11Fields(t *testing.T) {
	req, err := Decode([]byte(`{"type":"subscribe","room":"r","since":{"epoch":"ab12","offset":41},"presence":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.Since == nil || *req.Since != (Since{Offset: 41, Epoch: "ab12"}) || !req.Presence {
		t.Fatalf("got since %+v presence %v, want {41 ab12} true", req.Since, req.Presence)
	}
	req, err = Decode([]byte(`{"type":"publish","room":"r","data":1,"idempotency_key":"order-7:a"}`))
	if err != nil || req.IdempotencyKey != "order-7:a" {
		t.Fatalf("got key %q, %v; want order-7:a", req.IdempotencyKey, err)
	}
	req, err = Decode([]byte(`{"type":"presence","room":"r","id":1}`))
	if err != nil || req.Type != TypePresence {
		t.Fatalf("got %+v, %v; want a presence request", req, err)
	}
}

func TestDecodePublishBody(t *testing.T) {
	tests := []struct {
		body, wantCode, wantData, wantKey string
	}{
		{body: `{"room":"r","data": {"a" : [1, 2]} }`, wantData: `{"a":[1,2]}`},
		{body: `{"room":"r","data":"x","idempotency_key":"k1"}` + "\n", wantData: `"x"`, wantKey: "k1"},
		{body: `{"room":"r","data":1}}`, wantCode: CodeBadRequest},
		{body: `{"room":"r","data":1} {"room":"r","data":2}`, wantCode: CodeBadRequest},
		{body: `{"room":"r","data":1}garbage`, wantCode: CodeBadRequest},
		{body: `{"room":"r","room":"s","data":1}`, wantCode: CodeBadRequest},
		{body: `{"Room":"r","data":1}`, wantCode: CodeBadRoom},
		{body: `{"room":"r"}`, wantCode: CodeBadRequest},
		{body: `{"room":"a b","data":1}`, wantCode: CodeBadRoom},
		{body: `{"room":1,"data":1}`, wantCode: CodeBadRequest},
		{body: ``, wantCode: CodeBadRequest},
	}
	for _, tt := range tests {
		b, err := DecodePublishBody([]byte(tt.body))
		var gotCode string
		if err != nil {
			gotCode = err.Code
		}
		if gotCode != tt.wantCode {
			t.Errorf("DecodePublishBody(%s): got code %q, want %q", tt.body, gotCode, tt.wantCode)
			continue
		}
		if err == nil && (string(b.Data) != tt.wantData || b.IdempotencyKey != tt.wantKey) {
			t.Errorf("DecodePublishBody(%s): got data %s key %q, want %s %q", tt.body, b.Data, b.IdempotencyKey, tt.wantData, tt.wantKey)
		}
	}
}

func TestReconnectHint(t *testing.T) {
	for _, d := range []time.Duration{0, 1200 * time.Millisecond, 5 * time.Second} {
		got, ok := ParseReconnectHint(ReconnectHint(d))
		if !ok || got != d {
			t.Errorf("ParseReconnectHint(ReconnectHint(%v)): got %v %v, want %v true", d, got, ok, d)
		}
	}
	for _, reason := range []string{"", "going away", `{"reconnect_after_ms":"5"}`, `{"reconnect_after_ms":-1}`, `{}`} {
		if _, ok := ParseReconnectHint(reason); ok {
			t.Errorf("ParseReconnectHint(%q): got ok, want no hint", reason)
		}
	}
}

func TestSplit(t *testing.T) {
	var got []string
	err := Split([]byte("a\n\n b \r\nc"), func(line []byte) error {
		got = append(got, string(line))
		return nil
	})
	if err != nil || strings.Join(got, "|") != "a|b|c" {
		t.Fatalf("got %q, %v; want [a b c], nil", got, err)
	}
	stop := errors.New("stop")
	n := 0
	if err := Split([]byte("a\nb"), func([]byte) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("got %v after %d calls, want stop after 1", err, n)
	}
}

func TestEncodedObjectsAreJSON(t *testing.T) {
	for _, b := range [][]byte{
		AppendMessage(nil, "room:1", 0, []byte(`{"x":"y"}`)),
		AppendMessage(nil, "room:1", 18446744073709551615, []byte(`{"x":"y"}`)),
		AppendAck(nil, json.RawMessage(`"id-1"`)),
		AppendSubscribeAck(nil, []byte("1"), "r", Position{}, nil),
		AppendSubscribeAck(nil, []byte("1"), "r", Position{Epoch: "e\"", Offset: 9}, new(true)),
		AppendPublishAck(nil, []byte(`"p"`), 0),
		AppendPublishAck(nil, []byte(`"p"`), 7),
		AppendUnsubscribed(nil, "r", CodeForbidden, "token \" narrowed"),
		AppendError(nil, &Error{Code: CodeBadRoom, Message: "quote \" and <tag> and \n newline", ID: json.RawMessage("5")}),
		AppendError(nil, &Error{Code: CodeBadRequest, Message: "no id"}),
		AppendGap(nil, "r"),
	} {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("%s: not JSON: %v", b, err)
		}
		if strings.Contains(string(b), "\n") {
			t.Errorf("%s: holds a newline", b)
		}
	}
	for _, off := range []uint64{0, 1, 18446744073709551615} {
		if got, want := MessageLen("room", off, []byte("123")), len(AppendMessage(nil, "room", off, []byte("123"))); got < want {
			t.Errorf("MessageLen(offset %d): got %d, want at least %d (what AppendMessage writes)", off, got, want)
		}
	}
}

func TestAppendMessageDoesNotAllocateWithRoom(t *testing.T) {
	buf := make([]byte, 0, 256)
	data := []byte(`{"n":1}`)
	if n := testing.AllocsPerRun(100, func() { buf = AppendMessage(buf[:0], "r", 42, data) }); n != 0 {
		t.Errorf("got %v allocations, want 0", n)
	}
}

// FuzzDecode: no input panics, a success is a valid request, and an encoded
// reply to it is JSON.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","room":"r","id":1}`,
		`{"type":"publish","room":"r","data":{"a":1},"id":"x"}`,
		"{\"type\":\"publish\",\"room\":\"r\",\"data\":1}\n{\"type\":\"unsubscribe\",\"room\":\"r\"}",
		`{"type":"publish","room":"r","data":"\u0000"}`, `[]`, `{`, `"x"`, `{"id":{}}`,
		`{"type":"auth","token":"eyJhbGciOiJIUzI1NiJ9.e30.x","id":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		Split(frame, func(line []byte) error {
			req, err := Decode(line)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Code == "" {
					t.Fatalf("Decode(%q): error %v is not a coded *Error", line, err)
				}
				if !json.Valid(AppendError(nil, e)) {
					t.Fatalf("error reply for %q is not JSON", line)
				}
				return nil
			}
			if req.Type == TypeAuth {
				if req.Token == "" {
					t.Fatalf("Decode(%q) accepted an auth without a token", line)
				}
				return nil
			}
			if ValidateRoom(req.Room) != nil {
				t.Fatalf("Decode(%q) accepted room %q", line, req.Room)
			}
			if req.Type == TypePublish && !json.Valid(AppendMessage(nil, req.Room, 3, req.Data)) {
				t.Fatalf("message built from %q is not JSON", line)
			}
			if len(req.ID) > 0 && !json.Valid(AppendAck(nil, req.ID)) {
				t.Fatalf("ack built from %q is not JSON", line)
			}
			return nil
		})
	})
}

func BenchmarkDecodePublish(b *testing.B) {
	line := []byte(`{"type":"publish","room":"chat:general","data":{"text":"` + strings.Repeat("x", 100) + `"},"id":42}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMessage(b *testing.B) {
	data := []byte(`{"text":"` + strings.Repeat("x", 100) + `"}`)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMessage(buf[:0], "chat:general", 42, data)
	}
}
