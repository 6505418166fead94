package hubtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// StartRedisServer runs the redis-server binary on a free loopback port, with
// no persistence and args added to its command line, and returns its address
// once it answers PING. stop kills it and waits for it to exit; it may be
// called more than once. The error wraps exec.ErrNotFound when redis-server is
// not installed.
func StartRedisServer(args ...string) (addr string, stop func(), err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, fmt.Errorf("hubtest: redis-server is not installed (apt-get install redis-server): %w", err)
	}
	// The port is free when picked and may be taken before redis-server binds
	// it: then redis-server exits, and another port is tried.
	for range 3 {
		addr, stop, err = startRedisServer(bin, args, "")
		if !errors.Is(err, errExited) {
			return addr, stop, err
		}
	}
	return "", nil, err
}

var errExited = errors.New("redis-server exited")

// startRedisServer runs bin on port, or on a free port when port is empty.
func startRedisServer(bin string, args []string, port string) (string, func(), error) {
	if port == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, fmt.Errorf("hubtest: pick a port: %w", err)
		}
		_, port, _ = net.SplitHostPort(ln.Addr().String())
		ln.Close()
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	cmd := exec.Command(bin, append([]string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no"}, args...)...)
	var out bytes.Buffer // read only once the process has exited
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("hubtest: start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-exited
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid, err := ping(addr); err == nil && pid == cmd.Process.Pid {
			return addr, stop, nil
		} else if err == nil {
			// Another redis-server took the port first; this one will exit.
			stop()
			return "", nil, fmt.Errorf("hubtest: %w on %s: the port was taken", errExited, addr)
		}
		select {
		case <-exited:
			return "", nil, fmt.Errorf("hubtest: %w on %s: %s", errExited, addr, bytes.TrimSpace(out.Bytes()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("hubtest: redis-server on %s did not answer PING within 10s", addr)
		}
	}
}

// ping sends PING and INFO server, and returns the process id of the
// redis-server that answered: the port may be another test's server.
func ping(addr string) (pid int, err error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\nINFO server\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "+PONG\r\n" {
		return 0, fmt.Errorf("PING answered %q, %v", line, err)
	}
	head, err := r.ReadString('\n') // $<length>, then the bulk string
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if err != nil {
		return 0, fmt.Errorf("INFO answered %q", head)
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(info)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server holds no process_id")
}

// RedisServer is StartRedisServer for a test: the server is stopped when the
// test ends. Without the binary the test is skipped, unless CI=true or
// HUB_TEST_INTEGRATION=1 require it (scripts/docker-env.sh installs it).
func RedisServer(tb testing.TB, args ...string) (addr string) {
	tb.Helper()
	addr, stop, err := StartRedisServer(args...)
	if errors.Is(err, exec.ErrNotFound) && os.Getenv("CI") != "true" && os.Getenv("HUB_TEST_INTEGRATION") != "1" {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return addr
}
