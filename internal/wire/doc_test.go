package wire

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// docTable returns the first column of the markdown table under heading in
// docs/protocol.md, with backquotes removed.
func docTable(t *testing.T, heading string) []string {
	t.Helper()
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## "+heading+"\n")
	if !ok {
		t.Fatalf("docs/protocol.md has no section %q", heading)
	}
	rest, _, _ = strings.Cut(rest, "\n## ")
	var col []string
	for _, line := range strings.Split(rest, "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "|---") {
			continue
		}
		cell := strings.TrimSpace(strings.Split(line, "|")[1])
		col = append(col, strings.Trim(cell, "`"))
	}
	return col[1:] // the header row
}

// The error codes docs/protocol.md lists are the ones the code has.
func TestProtocolDocListsEveryErrorCode(t *testing.T) {
	codes := []string{CodeBadRequest, CodeBadRoom, CodeNotSubscribed, CodeForbidden, CodeTooLarge,
		CodeRateLimited, CodeUnavailable, CodeTimeout}
	documented := docTable(t, "Error codes")
	for _, c := range codes {
		if !slices.Contains(documented, c) {
			t.Errorf("error code %q is not in docs/protocol.md", c)
		}
	}
	for _, c := range documented {
		if !slices.Contains(codes, c) {
			t.Errorf("docs/protocol.md lists error code %q, which the code does not have", c)
		}
	}
}

// Every close code the node sends is documented.
func TestProtocolDocListsEveryCloseCode(t *testing.T) {
	sent := []websocket.StatusCode{websocket.StatusNormalClosure, websocket.StatusProtocolError,
		websocket.StatusInvalidFramePayloadData, websocket.StatusPolicyViolation, websocket.StatusMessageTooBig,
		websocket.StatusServiceRestart, websocket.StatusTryAgainLater, StatusSlowConsumer, StatusRateLimited}
	documented := docTable(t, "Close codes")
	for _, c := range sent {
		if !slices.Contains(documented, strconv.Itoa(int(c))) {
			t.Errorf("close code %d is not in docs/protocol.md", c)
		}
	}
}

// The object types of the tables are the ones the code decodes and sends.
func TestProtocolDocListsEveryType(t *testing.T) {
	in := docTable(t, "Client to server")
	for _, typ := range []string{TypeAuth, TypeSubscribe, TypeUnsubscribe, TypePublish} {
		if !slices.Contains(in, typ) {
			t.Errorf("request type %q is not in docs/protocol.md", typ)
		}
	}
	out := docTable(t, "Server to client")
	re := regexp.MustCompile(`"type":"([a-z]+)"`)
	for _, b := range [][]byte{AppendMessage(nil, "r", 1, []byte("1")), AppendAck(nil, []byte("1")),
		AppendError(nil, &Error{Code: CodeBadRequest}), AppendGap(nil, "r"), AppendUnsubscribed(nil, "r", "c", "m")} {
		typ := re.FindSubmatch(b)[1]
		if !slices.Contains(out, string(typ)) {
			t.Errorf("server object type %q is not in docs/protocol.md", typ)
		}
	}
}
