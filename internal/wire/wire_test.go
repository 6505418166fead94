package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
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
		{line: `{"type":"subscribe","room":"r","extra":true}`, wantType: "subscribe", wantRoom: "r"},
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
		{line: `{"type":"auth","token":"abc","id":3}`, wantType: "auth", wantID: "3"},
		{line: `{"type":"auth"}`, wantCode: CodeBadRequest},
		{line: `{"type":"auth","token":""}`, wantCode: CodeBadRequest},
		{line: `{"type":"auth","token":5}`, wantCode: CodeBadRequest},
		{line: `{"type":"subscribe","room":"r"} trailing`, wantCode: CodeBadRequest},
	}
	for _, tt := range tests {
		req, err := Decode([]byte(tt.line))
		if tt.wantCode != "" {
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("Decode(%s): got error %v, want code %s", tt.line, err, tt.wantCode)
				continue
			}
			if e.Code != tt.wantCode {
				t.Errorf("Decode(%s): got code %s, want %s", tt.line, e.Code, tt.wantCode)
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
		AppendMessage(nil, "room:1", []byte(`{"x":"y"}`)),
		AppendAck(nil, json.RawMessage(`"id-1"`)),
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
	if got, want := MessageLen("room", []byte("123")), len(AppendMessage(nil, "room", []byte("123"))); got != want {
		t.Errorf("MessageLen: got %d, want %d", got, want)
	}
}

func TestAppendMessageDoesNotAllocateWithRoom(t *testing.T) {
	buf := make([]byte, 0, 256)
	data := []byte(`{"n":1}`)
	if n := testing.AllocsPerRun(100, func() { buf = AppendMessage(buf[:0], "r", data) }); n != 0 {
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
			if req.Type == TypePublish && !json.Valid(AppendMessage(nil, req.Room, req.Data)) {
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
		buf = AppendMessage(buf[:0], "chat:general", data)
	}
}
