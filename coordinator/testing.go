package coordinator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/pki"
)

// TestConfig returns DefaultConfig tuned for tests on loopback: random
// ports, in-memory storage, fast elections and a short worker lease.
func TestConfig(t testing.TB, nodeID string) Config {
	c := DefaultConfig()
	c.NodeID = nodeID
	c.LeaseTTL = 2 * time.Second
	c.ReplanInterval = 500 * time.Millisecond
	c.ProgressInterval = 0
	c.RaftHeartbeatTimeout = 300 * time.Millisecond
	c.RaftElectionTimeout = 300 * time.Millisecond
	c.RaftLeaderLease = 150 * time.Millisecond
	c.Logger = testLogger(t)
	return c
}

// testLogger logs warnings and errors to t, and drops whatever Raft's
// connection goroutines still log once the test has ended (zaptest would
// panic on those).
func testLogger(t testing.TB) *zap.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	enc := zap.NewDevelopmentEncoderConfig()
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), w, zap.WarnLevel))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) Sync() error { return nil }

// NewTestServer starts an embedded single-node coordinator for a test and
// closes it at the test's end. mutate, if not nil, edits the config first.
func NewTestServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := TestConfig(t, "coord-0")
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatalf("start embedded coordinator: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestCluster is an in-process cluster of coordinators for tests.
type TestCluster struct {
	t     testing.TB
	Nodes []*Server
}

// NewTestCluster starts n in-process coordinators (node 0 bootstraps, the
// others join through it), waits until all have joined, and closes them at
// the test's end. mutate, if given, changes every node's config.
func NewTestCluster(t testing.TB, n int, mutate ...func(*Config)) *TestCluster {
	t.Helper()
	c := &TestCluster{t: t}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	apply := func(cfg *Config) {
		for _, m := range mutate {
			m(cfg)
		}
	}
	first := NewTestServer(t, func(cfg *Config) { cfg.NodeID = "coord-0"; apply(cfg) })
	c.Nodes = append(c.Nodes, first)
	for i := 1; i < n; i++ {
		cfg := TestConfig(t, fmt.Sprintf("coord-%d", i))
		cfg.Join = []string{first.Addr()}
		apply(&cfg)
		s, err := Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start coordinator %d: %v", i, err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	for _, s := range c.Nodes {
		if err := s.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Leader returns the node that leads now, waiting up to 10 s for one.
func (c *TestCluster) Leader() *Server {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range c.Nodes {
			if s != nil && s.IsLeader() {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader among %d coordinators after 10s", len(c.Nodes))
	return nil
}

// Addrs returns the gRPC addresses of the nodes still running.
func (c *TestCluster) Addrs() []string {
	var out []string
	for _, s := range c.Nodes {
		if s != nil {
			out = append(out, s.Addr())
		}
	}
	return out
}

// Stop closes node i (it stays in the Raft configuration).
func (c *TestCluster) Stop(i int) {
	if c.Nodes[i] != nil {
		_ = c.Nodes[i].Close()
		c.Nodes[i] = nil
	}
}

// Close stops every node.
func (c *TestCluster) Close() {
	for i := range c.Nodes {
		c.Stop(i)
	}
}

// Dial returns a client connection over every given address, closed at the
// test's end.
func Dial(t testing.TB, addrs ...string) *grpc.ClientConn {
	t.Helper()
	conn, err := api.Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// RestartablePort returns a free 127.0.0.1 port below the kernel's
// ephemeral range, for a test that stops a server and starts it again on
// the same address while clients keep dialing it. No outgoing connection
// is given such a port, so a client's dial cannot connect to itself (TCP
// simultaneous open, which on loopback happens when the dialed port is in
// the ephemeral range and nothing listens) and hold the port while the
// server is down.
func RestartablePort(t testing.TB) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for range 200 {
		p := 10000 + rand.IntN(max(1, low-10000))
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			_ = ln.Close()
			return strconv.Itoa(p)
		}
	}
	t.Fatalf("no free port in [10000, %d)", low)
	return ""
}

// DialTLS is Dial presenting id's certificate and admitting coordinator
// certificates of its CA.
func DialTLS(t testing.TB, id *pki.Identity, addrs ...string) *grpc.ClientConn {
	t.Helper()
	conn, err := api.Dial(addrs, grpc.WithTransportCredentials(credentials.NewTLS(id.Config(pki.RoleCoordinator))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// WaitRanks waits until job id's plan has n ranks and returns it.
func WaitRanks(ctx context.Context, t testing.TB, c api.CoordinatorClient, id string, n int) *api.Plan {
	t.Helper()
	for {
		r, err := c.GetJob(ctx, &api.GetJobRequest{JobId: id})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if len(r.GetPlan().GetRanks()) == n {
			return r.GetPlan()
		}
		time.Sleep(20 * time.Millisecond)
	}
}
