package coordinator

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// Environment of a child coordinator process (the test binary re-executed).
const (
	envChild     = "LOOM_TEST_COORDINATOR_CHILD"
	envID        = "LOOM_TEST_NODE_ID"
	envDataDir   = "LOOM_TEST_DATA_DIR"
	envRaftAddr  = "LOOM_TEST_RAFT_ADDR"
	envGRPCAddr  = "LOOM_TEST_GRPC_ADDR"
	envBootstrap = "LOOM_TEST_BOOTSTRAP"
	envJoin      = "LOOM_TEST_JOIN"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// runChild runs one coordinator with DefaultConfig timings (as `loom
// coordinator` does) until SIGTERM, printing "READY" once it serves.
func runChild() int {
	log, _ := zap.NewDevelopment(zap.AddStacktrace(zap.FatalLevel))
	cfg := DefaultConfig()
	cfg.NodeID = os.Getenv(envID)
	cfg.DataDir = os.Getenv(envDataDir)
	cfg.RaftAddr = os.Getenv(envRaftAddr)
	cfg.GRPCAddr = os.Getenv(envGRPCAddr)
	cfg.Bootstrap = os.Getenv(envBootstrap) == "1"
	if j := os.Getenv(envJoin); j != "" {
		cfg.Join = []string{j}
	}
	cfg.Logger = log
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := Start(ctx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child start:", err)
		return 1
	}
	fmt.Println("READY")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	// If the test process dies without stopping us, exit too: no orphans.
	parent := os.Getppid()
	orphaned := time.NewTicker(200 * time.Millisecond)
	defer orphaned.Stop()
	for {
		select {
		case <-sig:
			_ = s.Close()
			return 0
		case <-orphaned.C:
			if os.Getppid() != parent {
				_ = s.Close()
				return 2
			}
		}
	}
}

// childNode is a coordinator running in its own process.
type childNode struct {
	id, dataDir, raftAddr, grpcAddr, logPath string
	cmd                                      *exec.Cmd
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeAddrs(t, 1)[0]
}

// freeAddrs returns n distinct free loopback addresses: all listeners are
// held open until every port is chosen, so no two are the same.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		out[i] = l.Addr().String()
	}
	return out
}

// start launches the node's process and waits for READY.
func (n *childNode) start(t *testing.T, bootstrap bool, join string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envID+"="+n.id, envDataDir+"="+n.dataDir,
		envRaftAddr+"="+n.raftAddr, envGRPCAddr+"="+n.grpcAddr, envJoin+"="+join,
		envBootstrap+"="+map[bool]string{true: "1", false: "0"}[bootstrap])
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd = cmd
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "READY" {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("node %s exited before READY; log:\n%s", n.id, n.log())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("node %s not ready after 30s; log:\n%s", n.id, n.log())
	}
}

func (n *childNode) log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// kill sends SIGKILL and reaps the process.
func (n *childNode) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		n.cmd = nil
	}
}

// stop sends SIGTERM, waiting up to 5 s before SIGKILL.
func (n *childNode) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = n.cmd.Process.Kill()
		<-done
	}
	n.cmd = nil
}

// startProcessCluster starts n coordinator processes; node 0 bootstraps
// and the others join through it. Every process is stopped at cleanup.
func startProcessCluster(t *testing.T, n int) []*childNode {
	dir := t.TempDir()
	nodes := make([]*childNode, n)
	addrs := freeAddrs(t, 2*n)
	for i := range nodes {
		nodes[i] = &childNode{
			id: fmt.Sprintf("coord-%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("n%d", i)),
			raftAddr: addrs[2*i], grpcAddr: addrs[2*i+1], logPath: filepath.Join(dir, fmt.Sprintf("n%d.log", i)),
		}
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.stop()
		}
		if t.Failed() {
			for _, nd := range nodes {
				t.Logf("---- log of %s ----\n%s", nd.id, nd.log())
			}
		}
	})
	nodes[0].start(t, true, "")
	for _, nd := range nodes[1:] {
		nd.start(t, false, nodes[0].grpcAddr)
	}
	return nodes
}

// clusterLeader asks any node for the leader, waiting for a cluster with
// want voters and a known leader.
func clusterLeader(ctx context.Context, t *testing.T, cl api.ClusterClient, want int) *api.ClusterStatusResponse {
	t.Helper()
	for {
		st, err := cl.ClusterStatus(ctx, &api.ClusterStatusRequest{})
		if err == nil && st.LeaderGrpcAddr != "" && len(st.Members) == want {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no leader with %d members: %v %v", want, st, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
