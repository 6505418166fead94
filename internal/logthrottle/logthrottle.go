// Package logthrottle logs one kind of event without letting a flood of it
// flood the log.
package logthrottle

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Throttle logs one kind of event without letting a flood of it flood the
// log: the first event of a quiet spell is logged at once, the ones that
// follow within the interval are counted, and when the interval ends one
// summary line says how many were left out (with the last one's attributes).
// So it writes at most one line per interval. Its methods may be called
// concurrently; it never blocks on anything but its mutex.
type Throttle struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	every time.Duration

	mu         sync.Mutex
	quietUntil time.Time   // no line before this
	suppressed int         // events left out since the last line
	last       []any       // the attributes of the last one left out
	summary    *time.Timer // pending summary line, or nil
}

// New returns a Throttle that logs msg at level on log, at most one line per
// every.
func New(log *slog.Logger, level slog.Level, msg string, every time.Duration) *Throttle {
	return &Throttle{log: log, level: level, msg: msg, every: every}
}

// Log records an event with attrs (slog key-value pairs).
func (t *Throttle) Log(attrs ...any) {
	t.mu.Lock()
	now := time.Now()
	if t.summary == nil && !now.Before(t.quietUntil) {
		t.quietUntil = now.Add(t.every)
		t.mu.Unlock()
		t.log.Log(context.Background(), t.level, t.msg, attrs...)
		return
	}
	t.suppressed++
	t.last = attrs
	if t.summary == nil {
		t.summary = time.AfterFunc(t.quietUntil.Sub(now), t.summarize)
	}
	t.mu.Unlock()
}

func (t *Throttle) summarize() {
	t.mu.Lock()
	n, last := t.suppressed, t.last
	t.suppressed, t.last, t.summary = 0, nil, nil
	t.quietUntil = time.Now().Add(t.every)
	t.mu.Unlock()
	t.log.Log(context.Background(), t.level, t.msg+" (throttled)",
		"suppressed", n, "interval", t.every.String(), slog.Group("last", last...))
}
