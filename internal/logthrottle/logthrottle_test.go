package logthrottle

import (
	"github.com/hubcluster/hubcluster/internal/hubtest"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLogThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs hubtest.LogBuffer
		th := New(logs.Logger(), slog.LevelWarn, "refused", 10*time.Second)
		count := func() int { return len(logs.Lines(t, "refused")) }

		for i := range 1000 {
			th.Log("n", i)
		}
		if got := count(); got != 1 {
			t.Fatalf("after a flood of 1000: got %d lines, want 1", got)
		}
		time.Sleep(10 * time.Second) // fake time: the interval ends
		synctest.Wait()
		lines := logs.Lines(t, "refused")
		if len(lines) != 2 {
			t.Fatalf("after the interval: got %d lines, want 2", len(lines))
		}
		sum := lines[1]
		if sum["msg"] != "refused (throttled)" || sum["suppressed"] != 999.0 || sum["level"] != "WARN" ||
			sum["last"].(map[string]any)["n"] != 999.0 {
			t.Errorf("got summary %v, want 999 suppressed, the last one n=999", sum)
		}

		// Still within the interval after the summary: counted, summarized later.
		th.Log("n", 1000)
		if got := count(); got != 2 {
			t.Fatalf("right after the summary: got %d lines, want 2", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := logs.Lines(t, "refused"); len(got) != 3 || got[2]["suppressed"] != 1.0 {
			t.Fatalf("got %v, want a third line with 1 suppressed", got)
		}

		// A quiet spell: the next event is logged at once, and there is no
		// summary with nothing to say.
		time.Sleep(time.Minute)
		synctest.Wait()
		th.Log("n", 1001)
		if got := logs.Lines(t, "refused"); len(got) != 4 || got[3]["msg"] != "refused" || got[3]["n"] != 1001.0 {
			t.Fatalf("after a quiet minute: got %v, want the event logged at once", got)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := count(); got != 4 {
			t.Fatalf("got %d lines, want 4: no empty summary", got)
		}
	})
}
