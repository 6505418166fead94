package hubtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartRedisCluster runs a Redis Cluster of n primaries and no replicas on
// loopback: n redis-server processes with no persistence, the 16384 slots
// split evenly in order, and args added to every command line. It returns
// the nodes' addresses, in slot order, once every node reports the cluster
// ok. stop kills them all; it may be called more than once. The nodes keep
// serving their slots when another is down (cluster-require-full-coverage
// no), and take a node for failed after one second.
func StartRedisCluster(n int, args ...string) (addrs []string, stop func(), err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, nil, fmt.Errorf("hubtest: redis-server is not installed (apt-get install redis-server): %w", err)
	}
	dir, err := os.MkdirTemp("", "hubtest-cluster")
	if err != nil {
		return nil, nil, err
	}
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for i := range n {
		var addr string
		var stopNode func()
		for range 5 {
			port, perr := clusterPort()
			if perr != nil {
				return nil, nil, perr
			}
			nodeArgs := append([]string{"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d-%s.conf", i, port)),
				"--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"}, args...)
			addr, stopNode, err = startRedisServer(bin, nodeArgs, port)
			if !errors.Is(err, errExited) {
				break
			}
		}
		if err != nil {
			return nil, nil, err
		}
		stops = append(stops, stopNode)
		addrs = append(addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var clients []*redis.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		clients = append(clients, c)
		lo, hi := i*16384/n, (i+1)*16384/n-1
		if err := c.Do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			return nil, nil, fmt.Errorf("hubtest: CLUSTER ADDSLOTSRANGE on %s: %w", addr, err)
		}
	}
	for _, addr := range addrs[1:] {
		host, port, _ := net.SplitHostPort(addr)
		if err := clients[0].ClusterMeet(ctx, host, port).Err(); err != nil {
			return nil, nil, fmt.Errorf("hubtest: CLUSTER MEET %s: %w", addr, err)
		}
	}
	for _, c := range clients {
		for {
			info, ierr := c.ClusterInfo(ctx).Result()
			if ierr == nil && strings.Contains(info, "cluster_state:ok") &&
				strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r") {
				break
			}
			select {
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("hubtest: the cluster did not form within 30s: %v %q", ierr, info)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// Every node must know every other's slots before clients use it.
	for _, c := range clients {
		for {
			slots, serr := c.ClusterSlots(ctx).Result()
			if serr == nil && len(slots) == n {
				break
			}
			select {
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("hubtest: the slot map did not settle within 30s: %v", serr)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return addrs, stop, nil
}

// clusterPort picks a free port whose cluster bus port (10000 higher) is
// free too, and within range.
func clusterPort() (string, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("hubtest: pick a port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if port+10000 > 65535 {
			ln.Close()
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		ln.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return strconv.Itoa(port), nil
	}
	return "", errors.New("hubtest: no free port pair for a cluster node")
}

// RedisCluster is StartRedisCluster for a test: the nodes are stopped when
// the test ends. Without redis-server the test is skipped, unless CI=true or
// HUB_TEST_INTEGRATION=1 require it.
func RedisCluster(tb testing.TB, n int, args ...string) []string {
	tb.Helper()
	addrs, stop, err := StartRedisCluster(n, args...)
	if errors.Is(err, exec.ErrNotFound) && os.Getenv("CI") != "true" && os.Getenv("HUB_TEST_INTEGRATION") != "1" {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return addrs
}
