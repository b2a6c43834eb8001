package coordinator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
)

// A cluster with a join token file admits only workers that present a
// listed token: none is Unauthenticated, a wrong one PermissionDenied,
// each with a reason; the file's trailing newline is not part of the
// token; a rotated file takes effect without a restart, and a worker
// registered before the rotation keeps its lease.
func TestJoinToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("# current\nold-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := NewTestServer(t, func(c *Config) { c.JoinTokenFile = file })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	register := func(id, token string) error {
		_, err := c.RegisterWorker(api.WithJoinToken(ctx, token), &api.RegisterWorkerRequest{WorkerId: id, Profile: profile("127.0.0.1:9", 1)})
		return err
	}
	expect := func(err error, code codes.Code, msg string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(err.Error(), msg) {
			t.Fatalf("got %v, want %v with %q", err, code, msg)
		}
	}
	expect(register("w1", ""), codes.Unauthenticated, "--join-token-file")
	expect(register("w1", "guess"), codes.PermissionDenied, "not accepted")
	if err := register("w1", "old-token\n"); err != nil {
		t.Fatalf("listed token refused: %v", err)
	}
	// Rotate: the new token only (a different size, so the change is seen
	// even within the file system's timestamp granularity).
	if err := os.WriteFile(file, []byte("the-new-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect(register("w2", "old-token"), codes.PermissionDenied, "rotated out")
	if err := register("w2", "the-new-token"); err != nil {
		t.Fatalf("rotated token refused: %v", err)
	}
	if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w1"}); err != nil {
		t.Fatalf("a worker registered before the rotation lost its lease: %v", err)
	}
	if ws, err := c.ListWorkers(ctx, &api.ListWorkersRequest{}); err != nil || len(ws.GetWorkers()) != 2 {
		t.Fatalf("workers %v %v", ws, err)
	}
}

// Through a follower the token travels with the forwarded registration,
// and the leader checks it too.
func TestJoinTokenThroughFollower(t *testing.T) {
	cl := NewTestCluster(t, 3, func(c *Config) { c.JoinToken = "s3cret" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := cl.Leader()
	var follower *Server
	for _, s := range cl.Nodes {
		if s != leader {
			follower = s
		}
	}
	c := api.NewCoordinatorClient(Dial(t, follower.Addr()))
	if _, err := c.RegisterWorker(api.WithJoinToken(ctx, "s3cret"), &api.RegisterWorkerRequest{WorkerId: "w", Profile: profile("127.0.0.1:9", 1)}); err != nil {
		t.Fatalf("through follower %s: %v", follower.ID(), err)
	}
	if _, err := c.RegisterWorker(api.WithJoinToken(ctx, "nope"), &api.RegisterWorkerRequest{WorkerId: "x", Profile: profile("127.0.0.1:9", 1)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong token through a follower: %v", err)
	}
}
