// Package hubtest is what hubcluster's tests share: a real redis-server on a
// loopback port (RedisServer), one way to wait for a condition (Eventually),
// a WebSocket client that speaks the wire protocol (Client), and a bare one
// with no goroutine of its own for tests that hold thousands of members
// (Light).
//
// Only tests and cmd/hubbench import it (TestOnlyTestsImportHubtest checks
// that). Functions that take a testing.TB fail the test through it and must be
// called from the test's goroutine unless their doc says otherwise; the rest
// (StartRedisServer, Poll) return errors and may be used anywhere.
package hubtest
