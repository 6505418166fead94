package hubtest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A Light speaks enough WebSocket to a real server: the upgrade with its
// query, masked frames out, large and small text frames in, an answered
// ping, and the close frame's code and reason.
func TestLight(t *testing.T) {
	big := strings.Repeat("x", 70000) // a 64-bit length
	url := wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			switch string(p) {
			case "hello":
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"ack"}`))
				c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("y", 300))) // a 16-bit length
				c.Write(ctx, websocket.MessageText, []byte(big))
			case "ping":
				// Ping waits for the pong, which the Light's Next sends; Read
				// must go on meanwhile to see it.
				go func() {
					pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					if c.Ping(pctx) == nil {
						c.Write(ctx, websocket.MessageText, []byte("ponged"))
					}
				}()
			case "close":
				c.Close(4100, "banned")
				return
			case "cut":
				c.CloseNow()
				return
			}
		}
	})
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/")
	l, err := DialLight(addr, "/ws?token=abc", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Send("hello"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"type":"ack"}`, strings.Repeat("y", 300), big} {
		got, err := l.Next(5 * time.Second)
		if err != nil || string(got) != want {
			t.Fatalf("got %d bytes %.40q, %v; want %d bytes %.40q", len(got), got, err, len(want), want)
		}
	}
	l.Send("ping")
	if got, err := l.Next(5 * time.Second); err != nil || string(got) != "ponged" {
		t.Fatalf("after a ping: got %q, %v; want the server to have seen the pong", got, err)
	}
	if _, err := l.Next(20 * time.Millisecond); err == nil {
		t.Fatal("Next with nothing sent: got a message, want a timeout")
	}
	l.Send("hello") // three frames to throw away
	if !Poll(5*time.Second, func() bool {
		n, err := l.Discard()
		return err == nil && n > 0
	}) {
		t.Fatal("Discard threw nothing away, want the three frames")
	}
	l.Send("cut")
	if !Poll(5*time.Second, func() bool { _, err := l.Discard(); return err != nil }) {
		t.Fatal("Discard after the server cut the connection: got no error, want its end")
	}
	l, err = DialLight(addr, "/ws", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Send("close")
	var ce *LightClose
	if _, err := l.Next(5 * time.Second); !errors.As(err, &ce) || ce.Code != 4100 || ce.Reason != "banned" {
		t.Fatalf("got %v, want a close 4100 banned", err)
	}
	l2, err := DialLight(addr, "/ws", "", 5*time.Second)
	if err != nil {
		t.Fatalf("a second dial: %v", err)
	}
	l2.Close()
}
