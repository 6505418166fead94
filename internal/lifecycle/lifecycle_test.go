package lifecycle

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newManager(t *testing.T, timeout time.Duration) *Manager {
	t.Helper()
	m, err := New(timeout, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestStepsRunInOrderWithinOneDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newManager(t, 10*time.Second)
		var order []string
		var deadlines []time.Time
		for _, name := range []string{"not-ready", "delay", "unsubscribe", "close"} {
			m.OnStop(name, func(ctx context.Context) error {
				order = append(order, name)
				d, _ := ctx.Deadline()
				deadlines = append(deadlines, d)
				if name == "delay" {
					time.Sleep(3 * time.Second)
				}
				return nil
			})
		}
		start := time.Now()
		if err := m.Stop(context.Background()); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if got := strings.Join(order, ","); got != "not-ready,delay,unsubscribe,close" {
			t.Fatalf("got order %s", got)
		}
		for i, d := range deadlines {
			if !d.Equal(start.Add(10 * time.Second)) {
				t.Errorf("step %d: got deadline %v after start, want the one shared 10s", i, d.Sub(start))
			}
		}
		if took := time.Since(start); took != 3*time.Second {
			t.Errorf("got %v in all, want 3s", took)
		}
	})
}

func TestOverrunForcesTheRestAndNamesTheStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newManager(t, 5*time.Second)
		var forced []bool
		m.OnStop("fast", func(ctx context.Context) error { forced = append(forced, ctx.Err() != nil); return nil })
		m.OnStop("stuck", func(ctx context.Context) error {
			forced = append(forced, ctx.Err() != nil)
			<-ctx.Done() // a wait that never ends by itself
			return ctx.Err()
		})
		m.OnStop("after", func(ctx context.Context) error { forced = append(forced, ctx.Err() != nil); return nil })
		m.OnStop("last", func(ctx context.Context) error { forced = append(forced, ctx.Err() != nil); return nil })
		start := time.Now()
		err := m.Stop(context.Background())
		if !errors.Is(err, ErrOverran) || !strings.Contains(err.Error(), `"stuck"`) {
			t.Fatalf("got %v, want ErrOverran naming step stuck", err)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("Stop took %v, want the 5s timeout", took)
		}
		want := []bool{false, false, true, true}
		for i := range want {
			if forced[i] != want[i] {
				t.Fatalf("got forced %v, want %v", forced, want)
			}
		}
	})
}

func TestSecondSignalForcesImmediately(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newManager(t, time.Minute)
		ctx, cancel := context.WithCancel(context.Background())
		ran := 0
		m.OnStop("slow", func(ctx context.Context) error {
			ran++
			select {
			case <-ctx.Done():
			case <-time.After(30 * time.Second):
			}
			return nil
		})
		m.OnStop("then", func(ctx context.Context) error {
			ran++
			if ctx.Err() == nil {
				t.Error("step after an interrupt got a live context")
			}
			return nil
		})
		go func() {
			time.Sleep(time.Second)
			cancel() // the second signal
		}()
		start := time.Now()
		if err := m.Stop(ctx); !errors.Is(err, ErrOverran) {
			t.Fatalf("got %v, want ErrOverran", err)
		}
		if took := time.Since(start); took != time.Second {
			t.Errorf("got %v, want 1s", took)
		}
		if ran != 2 {
			t.Errorf("got %d steps run, want 2", ran)
		}
	})
}

func TestStopIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newManager(t, time.Second)
		runs := 0
		m.OnStop("once", func(ctx context.Context) error { runs++; time.Sleep(100 * time.Millisecond); return nil })
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				if err := m.Stop(context.Background()); err != nil {
					t.Errorf("Stop: %v", err)
				}
			})
		}
		wg.Wait()
		if runs != 1 {
			t.Errorf("got %d runs, want 1", runs)
		}
	})
}

func TestStepErrorsDoNotStopTheDrain(t *testing.T) {
	m := newManager(t, time.Second)
	ran := false
	m.OnStop("fails", func(ctx context.Context) error { return errors.New("redis down") })
	m.OnStop("next", func(ctx context.Context) error { ran = true; return nil })
	if err := m.Stop(context.Background()); err != nil {
		t.Fatalf("got %v, want nil: a failed step is logged, not fatal", err)
	}
	if !ran {
		t.Error("the step after a failing one did not run")
	}
}
