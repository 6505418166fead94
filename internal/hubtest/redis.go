package hubtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
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
		addr, stop, err = startRedisServer(bin, args)
		if !errors.Is(err, errExited) {
			return addr, stop, err
		}
	}
	return "", nil, err
}

var errExited = errors.New("redis-server exited")

func startRedisServer(bin string, args []string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("hubtest: pick a port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
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
		if ping(addr) == nil {
			return addr, stop, nil
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

// ping sends PING in RESP and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
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
