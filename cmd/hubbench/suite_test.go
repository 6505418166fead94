package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("HUBBENCH_FAKE_NODE") == "1" {
		fakeNode()
		return
	}
	goleak.VerifyTestMain(m)
}

// fakeNode stands in for the node binary when the suite runs this test
// binary: it records its pid in HUBBENCH_FAKE_DIR, answers /readyz with 200
// until SIGTERM ends it, or exits at once when HUB_NODE_ID is
// HUBBENCH_FAKE_FAIL_ID.
func fakeNode() {
	id := os.Getenv("HUB_NODE_ID")
	pid := strconv.Itoa(os.Getpid())
	os.WriteFile(filepath.Join(os.Getenv("HUBBENCH_FAKE_DIR"), id+"."+pid), nil, 0o644)
	if id == os.Getenv("HUBBENCH_FAKE_FAIL_ID") {
		os.Exit(3)
	}
	http.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") })
	err := http.ListenAndServe(os.Getenv("HUB_ADDR"), nil)
	fmt.Fprintln(os.Stderr, "fake node:", err)
	os.Exit(1)
}

// A scenario that fails after starting a node (here: its second node never
// becomes ready) leaves no node running when runSuite returns.
func TestSuiteStopsEveryNodeOnAnErrorPath(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Setenv("HUBBENCH_FAKE_NODE", "1")
	t.Setenv("HUBBENCH_FAKE_DIR", dir)
	t.Setenv("HUBBENCH_FAKE_FAIL_ID", "bench-b")
	err = runSuite(self, true, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "bench-b") {
		t.Fatalf("runSuite with a node that exits at start: got %v, want an error naming bench-b", err)
	}
	started, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// bench-a of the idle scenario, then bench-a and bench-b of the fan-out one.
	if len(started) != 3 {
		t.Errorf("got %d nodes started, want 3", len(started))
	}
	for _, f := range started {
		id, pidText, _ := strings.Cut(f.Name(), ".")
		pid, _ := strconv.Atoi(pidText)
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("node %s (pid %d) still runs after runSuite returned", id, pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}
