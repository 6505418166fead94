package hubtest

import (
	"fmt"
	"testing"
	"time"
)

// Poll calls cond until it returns true or timeout has passed, and reports
// whether it returned true. It checks once more at the end, so a slow cond is
// still given its last chance. The wait between calls grows from 1ms to 50ms.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(wait, left))
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// Eventually polls cond (see Poll) and fails the test if it has not returned
// true within timeout. format and args say what was waited for:
//
//	hubtest.Eventually(t, 10*time.Second, func() bool { return h.Running() }, "the hub's Run to start")
//
// When the failure should show the last value seen, poll with Poll and write
// the message yourself.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("waited %v for %s", timeout, fmt.Sprintf(format, args...))
	}
}
