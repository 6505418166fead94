package pubsub

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"
)

func TestMemory(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	ctx := context.Background()
	if err := m.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	m.Subscribe("a")
	m.Subscribe("b")
	m.Subscribe("a")
	m.Unsubscribe("b")
	if got := m.Subscriptions(); got != 1 {
		t.Errorf("got %d subscriptions, want 1", got)
	}
	if err := m.WaitSubscribed(ctx, "a"); err != nil || !m.Subscribed("a") || m.Subscribed("b") {
		t.Errorf("WaitSubscribed a: %v; Subscribed a %v b %v, want nil true false", err, m.Subscribed("a"), m.Subscribed("b"))
	}
	if rc, err := publish(m, "a", []byte("1"), ""); err != nil || rc.Offset != 0 {
		t.Errorf("Publish with history off: got %+v, %v; want no offset, nil", rc, err)
	}
	if _, _, err := m.Position(ctx, "a"); !errors.Is(err, ErrNoHistory) {
		t.Errorf("Position with history off: got %v, want ErrNoHistory", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Run(canceled, nil); err != nil {
		t.Errorf("Run: %v", err)
	}
	m.Close()
	if _, err := publish(m, "a", []byte("1"), ""); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Publish after Close: got %v, want ErrUnavailable", err)
	}
	if err := m.Ready(); !errors.Is(err, ErrClosed) {
		t.Errorf("Ready after Close: got %v, want ErrClosed", err)
	}
}

// The in-memory history has Redis's semantics: offsets from 1 per room, a
// bounded ring, reads after an offset, idempotency keys, expiry with a new
// epoch.
func TestMemoryHistory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory(MemoryConfig{HistorySize: 3, HistoryTTL: time.Minute})
		ctx := context.Background()
		epoch, top, err := m.Position(ctx, "r")
		if err != nil || epoch == "" || top != 0 {
			t.Fatalf("Position of a new room: got %q %d %v, want an epoch, 0, nil", epoch, top, err)
		}
		for i := 1; i <= 5; i++ {
			rc, err := publish(m, "r", fmt.Appendf(nil, "%d", i), "")
			if err != nil || rc.Offset != uint64(i) || rc.Epoch != epoch {
				t.Fatalf("publish %d: got %+v, %v; want offset %d in epoch %s", i, rc, err, i, epoch)
			}
		}
		if rc, _ := publish(m, "other", []byte("x"), ""); rc.Offset != 1 {
			t.Errorf("another room's first offset: got %d, want 1", rc.Offset)
		}
		h, err := m.History(ctx, "r", 0, 100)
		if err != nil || h.Top != 5 || len(h.Messages) != 3 || h.Messages[0].Offset != 3 || string(h.Messages[2].Data) != "5" {
			t.Fatalf("History after 0: got %+v, %v; want top 5 and offsets 3..5", h, err)
		}
		if h, _ := m.History(ctx, "r", 3, 1); len(h.Messages) != 1 || h.Messages[0].Offset != 4 {
			t.Errorf("History after 3, limit 1: got %+v, want offset 4", h.Messages)
		}
		first, _ := publish(m, "r", []byte("k"), "key-1")
		again, _ := publish(m, "r", []byte("k"), "key-1")
		if first.Duplicate || !again.Duplicate || again.Offset != first.Offset {
			t.Errorf("idempotent publish: got %+v then %+v, want the second a duplicate with the first's offset", first, again)
		}
		if _, top, _ := m.Position(ctx, "r"); top != 6 {
			t.Errorf("after a duplicate: top %d, want 6 (stored once)", top)
		}
		time.Sleep(2 * time.Minute) // the history expires
		rc, _ := publish(m, "r", []byte("new"), "key-1")
		if rc.Epoch == epoch || rc.Offset != 1 || rc.Duplicate {
			t.Errorf("after expiry: got %+v, want offset 1 in a new epoch, not a duplicate", rc)
		}
	})
}
