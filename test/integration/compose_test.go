package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubcluster/hubcluster/internal/hubtest"
)

// composeCmd is "docker compose" when the v2 plugin is there, else Debian's
// docker-compose v1.
func composeCmd() ([]string, error) {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}, nil
	}
	if path, err := exec.LookPath("docker-compose"); err == nil {
		return []string{path}, nil
	}
	return nil, errors.New("neither docker compose nor docker-compose is installed")
}

type stack struct {
	t       *testing.T
	root    string
	compose []string
	env     []string
	lbAddr  string
}

func (s *stack) run(args ...string) string {
	s.t.Helper()
	out, err := s.try(args...)
	if err != nil {
		s.t.Fatalf("%s %s: %v\n%s", strings.Join(s.compose, " "), strings.Join(args, " "), err, out)
	}
	return out
}

func (s *stack) try(args ...string) (string, error) {
	cmd := exec.Command(s.compose[0], append(s.compose[1:], args...)...)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), s.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// container returns the id of a service's container.
func (s *stack) container(service string) string {
	s.t.Helper()
	return strings.TrimSpace(s.run("ps", "-q", service))
}

// nodeURL is a replica's own address on the Docker bridge, for its metrics.
func (s *stack) nodeURL(service string) string {
	s.t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", s.container(service)).Output()
	if err != nil {
		s.t.Fatalf("docker inspect %s: %v", service, err)
	}
	return "http://" + strings.TrimSpace(string(out)) + ":8080"
}

func (s *stack) nodeMetric(service, name string) float64 {
	s.t.Helper()
	n := &node{t: s.t, id: service, addr: strings.TrimPrefix(s.nodeURL(service), "http://")}
	return n.metric(name)
}

func waitHTTP(t *testing.T, url string, want int, timeout time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	var last any
	if !hubtest.Poll(timeout, func() bool {
		resp, err := client.Get(url)
		if err != nil {
			last = err
			return false
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == want
	}) {
		t.Fatalf("%s did not answer %d within %v (last: %v)", url, want, timeout, last)
	}
}

// publishLB publishes data to room smoke through the load balancer with an
// idempotency key, and returns the status.
func publishLB(t *testing.T, lb string, data any, key string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"room": "smoke", "data": data, "idempotency_key": key})
	resp, err := http.Post("http://"+lb+"/v1/publish", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestComposeRollingRestart brings up docker-compose.yml (Redis with AOF,
// three replicas, HAProxy) and drains replicas under load, through the load
// balancer only: one, then all three one after another. 300 clients (the Go
// client: it reconnects at the hint through the load balancer and recovers
// with since) must each receive every message exactly once, in offset
// order, whether they moved or not.
func TestComposeRollingRestart(t *testing.T) {
	compose, err := composeCmd()
	if err != nil {
		if required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	start := time.Now()
	root, _ := filepath.Abs("../..")
	image := "hubcluster/node:smoke"
	build := exec.Command("make", "-C", root, "image", "NODE_IMAGE="+image)
	build.Env = append(os.Environ(), "NODE_IMAGE="+image)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	lb := freePort(t)
	_, port, _ := strings.Cut(lb, ":")
	s := &stack{t: t, root: root, compose: compose, lbAddr: lb, env: []string{
		"COMPOSE_PROJECT_NAME=" + strings.TrimSuffix(uniquePrefix(), ":") + "smoke",
		"CONTAINER_PREFIX=" + strings.TrimSuffix(uniquePrefix(), ":") + "smoke-",
		"NODE_IMAGE=" + image, "HUB_LB_BIND=127.0.0.1", "HUB_LB_PORT=" + port,
		"HUB_DRAIN_DELAY=2s", "HUB_RECONNECT_WINDOW=2s",
	}}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.try("logs", "--no-color", "--tail=60")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := s.try("down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})
	services := []string{"node-a", "node-b", "node-c"}
	s.run("up", "-d")
	for _, svc := range services {
		waitHTTP(t, s.nodeURL(svc)+"/readyz", 200, 60*time.Second)
	}
	waitHTTP(t, "http://"+lb+"/readyz", 200, 60*time.Second)
	time.Sleep(1500 * time.Millisecond) // HAProxy needs two good checks (rise 2) per replica

	// 300 clients through the load balancer, spread over all replicas.
	const clients = 300
	url := "ws://" + lb + "/ws"
	members := make([]*tracker, clients)
	for i := range members {
		members[i] = track(t, "smoke", url)
	}
	perNode := map[string]float64{}
	if !hubtest.Poll(20*time.Second, func() bool {
		total := 0.0
		for _, svc := range services {
			perNode[svc] = s.nodeMetric(svc, "hub_connections")
			total += perNode[svc]
		}
		return total == clients
	}) {
		t.Fatalf("connections per replica %v, want %d in all", perNode, clients)
	}
	t.Logf("connections per replica: %v", perNode)
	for svc, n := range perNode {
		if n == 0 {
			t.Fatalf("replica %s got no connection: %v", svc, perNode)
		}
	}

	// Publish 0, 1, 2, ... at 20 a second through the load balancer; a
	// publish that fails is retried with the same key, so each number is
	// published once.
	var next atomic.Int64
	var retries atomic.Int64
	stopPub := make(chan struct{})
	var pubWG sync.WaitGroup
	pubWG.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for publishLB(t, lb, i, fmt.Sprintf("smoke-%d", i)) != 202 {
				retries.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
			next.Store(int64(i + 1))
		}
	})
	drain := func(svc string) {
		t.Helper()
		victim := s.container(svc)
		if out, err := exec.Command("docker", "kill", "-s", "SIGTERM", victim).CombinedOutput(); err != nil {
			t.Fatalf("docker kill -s SIGTERM: %v\n%s", err, out)
		}
		out, _ := exec.Command("docker", "wait", victim).Output()
		if code := strings.TrimSpace(string(out)); code != "0" {
			t.Errorf("drained replica %s exited %s, want 0", svc, code)
		}
		s.run("start", svc)
		waitHTTP(t, s.nodeURL(svc)+"/readyz", 200, 60*time.Second)
		time.Sleep(1500 * time.Millisecond) // back in rotation: rise 2 at 500ms
	}
	// check waits until every member has every number published so far,
	// then asserts exactly once, in offset order.
	check := func(stage string) (moved int) {
		t.Helper()
		last := int(next.Load()) - 1
		settle(t, members, last+1)
		for i, m := range members {
			m.check(fmt.Sprintf("%s: member %d", stage, i), 0, last)
			m.mu.Lock()
			if m.ups > 1 {
				moved++
			}
			if m.gaps != 0 {
				t.Errorf("%s: member %d was told %d gaps, want none", stage, i, m.gaps)
			}
			m.mu.Unlock()
		}
		t.Logf("%s: %d messages so far; %d of %d clients have moved at least once; every one has each message once, in offset order",
			stage, last+1, moved, clients)
		return moved
	}
	time.Sleep(time.Second)
	onVictim := int(perNode["node-b"])
	drain("node-b")
	if moved := check("one replica drained"); moved < onVictim {
		t.Errorf("%d clients moved, want at least the %d that were on node-b", moved, onVictim)
	}
	for _, svc := range services {
		drain(svc)
	}
	close(stopPub)
	pubWG.Wait()
	check("all three drained one after another")
	t.Logf("publishes retried through the load balancer: %d", retries.Load())

	// The cluster view: three live nodes; a SIGKILLed one leaves it within
	// HUB_NODE_TIMEOUT (5s), and its members' presence entries with it.
	nodes := func() []string {
		resp, err := http.Get("http://" + lb + "/v1/nodes")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var body struct {
			Nodes []struct{ ID string } `json:"nodes"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		var ids []string
		for _, n := range body.Nodes {
			ids = append(ids, n.ID)
		}
		return ids
	}
	if !hubtest.Poll(10*time.Second, func() bool { return len(nodes()) == 3 }) {
		t.Fatalf("GET /v1/nodes: got %v, want node-a, node-b, node-c", nodes())
	}
	killed := time.Now()
	if out, err := exec.Command("docker", "kill", s.container("node-b")).CombinedOutput(); err != nil {
		t.Fatalf("docker kill node-b: %v\n%s", err, out)
	}
	if !hubtest.Poll(5*time.Second+2*time.Second, func() bool { return !slices.Contains(nodes(), "node-b") && len(nodes()) == 2 }) {
		t.Fatalf("GET /v1/nodes after SIGKILL of node-b: got %v, want node-a and node-c within HUB_NODE_TIMEOUT", nodes())
	}
	t.Logf("GET /v1/nodes dropped the SIGKILLed node-b after %v", time.Since(killed).Round(100*time.Millisecond))
	t.Logf("smoke test took %v", time.Since(start).Round(time.Second))
}
