package pubsub

import (
	"context"
	"errors"
	"testing"
)

func TestMemory(t *testing.T) {
	m := NewMemory()
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
	if err := m.WaitSubscribed(ctx, "a"); err != nil {
		t.Errorf("WaitSubscribed: %v", err)
	}
	if err := m.Publish(ctx, "a", []byte("x")); err != nil {
		t.Errorf("Publish: %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Publish(canceled, "a", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a canceled context: got %v, want context.Canceled", err)
	}
	if err := m.Run(canceled, nil); err != nil {
		t.Errorf("Run: %v", err)
	}
	m.Close()
	if err := m.Publish(ctx, "a", []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: got %v, want ErrClosed", err)
	}
	if err := m.Ready(); !errors.Is(err, ErrClosed) {
		t.Errorf("Ready after Close: got %v, want ErrClosed", err)
	}
}
