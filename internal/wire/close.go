package wire

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Close codes of the protocol beyond RFC 6455's (docs/protocol.md, "Close
// codes"). The standard ones are websocket.Status* constants.
const (
	// StatusSlowConsumer: the client fell behind its messages.
	StatusSlowConsumer websocket.StatusCode = 4000
	// StatusRateLimited: the client kept sending over its rate limit.
	StatusRateLimited websocket.StatusCode = 4001
)

// ReconnectHint is the close reason of a drain (1012): how long the client
// should wait before it reconnects, as JSON: {"reconnect_after_ms":1200}.
func ReconnectHint(after time.Duration) string {
	return `{"reconnect_after_ms":` + strconv.FormatInt(after.Milliseconds(), 10) + `}`
}

// ParseReconnectHint reads a close reason written by ReconnectHint. ok is
// false when reason holds no hint.
func ParseReconnectHint(reason string) (after time.Duration, ok bool) {
	var h struct {
		MS *int64 `json:"reconnect_after_ms"`
	}
	if json.Unmarshal([]byte(reason), &h) != nil || h.MS == nil || *h.MS < 0 {
		return 0, false
	}
	return time.Duration(*h.MS) * time.Millisecond, true
}
