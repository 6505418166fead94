package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hubcluster/hubcluster/client"
)

// fakeNode is a WebSocket server on loopback that answers every object the
// client sends with what serve sends (send writes one frame: the objects
// one a line). It returns the URL to dial.
func fakeNode(t *testing.T, serve func(f map[string]any, send func(objs ...any))) string {
	t.Helper()
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer ws.CloseNow()
		ctx := context.Background()
		send := func(objs ...any) {
			lines := make([]string, len(objs))
			for i, o := range objs {
				b, err := json.Marshal(o)
				if err != nil {
					panic(err)
				}
				lines[i] = string(b)
			}
			ws.Write(ctx, websocket.MessageText, []byte(strings.Join(lines, "\n")))
		}
		for {
			_, p, err := ws.Read(ctx)
			if err != nil {
				return
			}
			var f map[string]any
			if json.Unmarshal(p, &f) == nil {
				serve(f, send)
			}
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}

// A presence object with no id (or an id no request waits for) is the node's
// snapshot of a room, sent after it lost and regained its broker's
// subscription to it: the WithPresence handler gets it, in order with the
// join and leave events, and it is not taken for the answer of Presence.
func TestPresenceSnapshot(t *testing.T) {
	mem := func(id, user string) client.Member { return client.Member{Client: id, User: user, Node: "fake"} }
	me, ann, ben, cat := mem("me.1", ""), mem("ann.1", "ann"), mem("ben.1", "ben"), mem("cat.1", "cat")
	event := func(typ, room string, m client.Member) map[string]any {
		return map[string]any{"type": typ, "room": room, "client": m.Client, "user": m.User, "node": m.Node}
	}
	var mu sync.Mutex
	var subscribes []map[string]any
	url := fakeNode(t, func(f map[string]any, send func(...any)) {
		room, _ := f["room"].(string)
		ack := map[string]any{"type": "ack", "id": f["id"], "room": room, "epoch": "e1", "offset": 0}
		switch f["type"] {
		case "subscribe":
			mu.Lock()
			subscribes = append(subscribes, f)
			mu.Unlock()
			switch room {
			case "r":
				send(ack)
				send(event("join", "r", me))
				// The snapshot, then the usual events, in one frame.
				send(map[string]any{"type": "presence", "room": "r", "count": 3, "members": []client.Member{me, ann, ben}},
					event("leave", "r", ben), event("join", "r", cat))
			case "s":
				// An id no request waits for: a snapshot all the same.
				send(ack, map[string]any{"type": "presence", "id": "c999", "room": "s", "count": 1500, "members": []client.Member{ann}})
			default:
				// Subscribed without presence: nothing to deliver.
				send(ack, map[string]any{"type": "presence", "room": room, "count": 1, "members": []client.Member{me}})
			}
		case "presence":
			// An unsolicited snapshot just before the reply.
			send(map[string]any{"type": "presence", "room": room, "count": 1, "members": []client.Member{me}})
			send(map[string]any{"type": "presence", "id": f["id"], "room": room, "count": 2, "members": []client.Member{me, cat}})
		default:
			send(map[string]any{"type": "ack", "id": f["id"]})
		}
	})
	c := dial(t, url, &client.Options{RequestTimeout: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var rl, sl presenceLog
	if _, err := c.Subscribe(ctx, "r", func(client.Message) {}, client.WithPresence(rl.handle)); err != nil {
		t.Fatal(err)
	}
	rl.waitFor(t, "cat's join after the snapshot", func(ev client.PresenceEvent) bool { return ev.Client == cat.Client })
	want := []client.PresenceEvent{
		{Type: "join", Room: "r", Client: me.Client, Node: "fake"},
		{Type: "presence", Room: "r", Count: 3, Members: []client.Member{me, ann, ben}},
		{Type: "leave", Room: "r", Client: ben.Client, User: "ben", Node: "fake"},
		{Type: "join", Room: "r", Client: cat.Client, User: "cat", Node: "fake"},
	}
	if got := rl.events(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n got %+v\nwant %+v", got, want)
	}
	if got, want := rl.members(), map[string]client.Member{me.Client: me, ann.Client: ann, cat.Client: cat}; !reflect.DeepEqual(got, want) {
		t.Fatalf("members after the snapshot and events: %+v, want %+v", got, want)
	}

	if _, err := c.Subscribe(ctx, "s", func(client.Message) {}, client.WithPresence(sl.handle)); err != nil {
		t.Fatal(err)
	}
	sl.waitFor(t, "the snapshot of s", func(ev client.PresenceEvent) bool { return ev.Type == "presence" })
	if got, want := sl.events(), []client.PresenceEvent{{Type: "presence", Room: "s", Count: 1500, Members: []client.Member{ann}}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events of s: %+v, want %+v", got, want)
	}
	if _, err := c.Subscribe(ctx, "plain", func(client.Message) {}); err != nil {
		t.Fatal(err)
	}

	// The reply goes to Presence; the snapshot before it to the handler.
	p, err := c.Presence(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if want := (client.Presence{Room: "r", Count: 2, Members: []client.Member{me, cat}}); !reflect.DeepEqual(p, want) {
		t.Fatalf("Presence: %+v, want %+v", p, want)
	}
	got := rl.waitFor(t, "the snapshot sent before the reply", func(ev client.PresenceEvent) bool { return ev.Type == "presence" && ev.Count == 1 })
	if want := (client.PresenceEvent{Type: "presence", Room: "r", Count: 1, Members: []client.Member{me}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot: %+v, want %+v", got, want)
	}
	if n := len(rl.events()); n != 5 {
		t.Fatalf("%d events of r, want 5: %+v", n, rl.events())
	}
	if got, want := rl.members(), map[string]client.Member{me.Client: me}; !reflect.DeepEqual(got, want) {
		t.Fatalf("members after the second snapshot: %+v, want %+v", got, want)
	}
	if n := len(sl.events()); n != 1 {
		t.Fatalf("%d events of s, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var asked []string
	for _, f := range subscribes {
		asked = append(asked, f["room"].(string)+":"+map[bool]string{true: "presence", false: "plain"}[f["presence"] == true])
	}
	if want := []string{"r:presence", "s:presence", "plain:plain"}; !reflect.DeepEqual(asked, want) {
		t.Fatalf("subscribes %v, want %v", asked, want)
	}
	if c.State() != client.Connected {
		t.Fatalf("state %v", c.State())
	}
}
