package integration

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/testcontainers/testcontainers-go"
	"go.uber.org/goleak"
)

// required: under CI, or when make test asks for it, a missing Docker engine
// fails the run instead of skipping it.
func required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("HUB_TEST_INTEGRATION") == "1"
}

func TestMain(m *testing.M) {
	if err := dockerAvailable(); err != nil {
		if required() {
			fmt.Fprintf(os.Stderr, "integration: no Docker engine: %v\n(run scripts/docker-env.sh, or make test, which does)\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "integration: SKIPPED, no Docker engine: %v\n", err)
		os.Exit(0)
	}
	bin, cleanup, err := buildNode()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	nodeBinary = bin
	code := m.Run()
	cleanup()
	if code == 0 {
		// The Docker client's idle connections live for the whole process.
		if err := goleak.Find(
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "integration: goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func dockerAvailable() error {
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Health(context.Background())
}
