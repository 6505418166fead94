package pubsub

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// sentinelOn runs a Redis Sentinel on loopback that watches the primary at
// addr as "mymaster" (quorum 1, down after 1s), and returns its address.
func sentinelOn(t *testing.T, primary string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	host, pport, _ := net.SplitHostPort(primary)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `port %s
bind 127.0.0.1
dir %s
sentinel monitor mymaster %s %s 1
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
`, port, dir, host, pport), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := "127.0.0.1:" + port
	c := redis.NewSentinelClient(&redis.Options{Addr: addr})
	defer c.Close()
	hubtest.Eventually(t, 20*time.Second, func() bool {
		replicas, err := c.Replicas(context.Background(), "mymaster").Result()
		return err == nil && len(replicas) == 1
	}, "the sentinel to know the primary and its replica")
	return addr
}

// The primary Sentinel watches is killed: the broker is not ready while it is
// blind, follows Sentinel to the replica it promotes, subscribes its rooms
// there and reports them to Resync; the history, replicated, is whole, so no
// new epoch starts; publishing works again.
func TestSentinelFollowsAFailover(t *testing.T) {
	primary, stopPrimary, err := hubtest.StartRedisServer()
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(stopPrimary)
	host, port, _ := net.SplitHostPort(primary)
	replica := hubtest.RedisServer(t, "--replicaof", host, port)
	rc := redis.NewClient(&redis.Options{Addr: replica})
	defer rc.Close()
	hubtest.Eventually(t, 10*time.Second, func() bool {
		info, _ := rc.Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	}, "the replica to sync")
	sentinel := sentinelOn(t, primary)

	rec := newRecorder()
	cfg := RedisConfig{Sentinels: []string{sentinel}, SentinelMaster: "mymaster", NodeID: "s", Prefix: "sent:",
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second, HistorySize: 100}
	b := runBrokerWith(t, cfg, rec)
	b.Subscribe("r")
	ctx := context.Background()
	if err := b.WaitSubscribed(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	var epoch string
	for i := range 5 {
		rcpt, err := publish(b, "r", []byte(fmt.Sprint(i)), "")
		if err != nil {
			t.Fatal(err)
		}
		epoch = rcpt.Epoch
	}
	rec.waitCount(t, "r", 5)
	hubtest.Eventually(t, 10*time.Second, func() bool {
		off, _ := rc.HGet(ctx, b.metaKey("r"), "t").Int()
		return off == 5
	}, "the replica to hold the room's history")

	stopPrimary()
	if !hubtest.Poll(10*time.Second, func() bool { return b.Ready() != nil }) {
		t.Fatal("the primary is gone: the broker stayed ready")
	}
	if !hubtest.Poll(30*time.Second, func() bool { return b.Ready() == nil }) {
		t.Fatalf("not ready again after the failover: %v", b.Ready())
	}
	hubtest.Eventually(t, 10*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.gaps) > 0
	}, "the room to be reported to Resync")
	rcpt, err := publish(b, "r", []byte("5"), "")
	if err != nil {
		t.Fatalf("publish after the failover: %v", err)
	}
	if rcpt.Epoch != epoch || rcpt.Offset != 6 {
		t.Errorf("after the failover: got epoch %s offset %d, want %s 6 (the history whole)", rcpt.Epoch, rcpt.Offset, epoch)
	}
	if got := rec.waitCount(t, "r", 6); got[5] != "5" {
		t.Errorf("got %q, want the message published after the failover", got)
	}
	if got := testutil.ToFloat64(b.metrics.fences); got != 0 {
		t.Errorf("hub_redis_history_fences_total: got %v, want 0 (nothing was lost)", got)
	}
	if got := testutil.ToFloat64(b.metrics.shardReconnects.WithLabelValues("mymaster")); got < 1 {
		t.Errorf("hub_redis_shard_reconnects_total{shard=mymaster}: got %v, want at least 1", got)
	}
}
