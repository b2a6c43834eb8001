package coordinator

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/pki"
)

// TestTLSCluster: three coordinators with mTLS elect a leader and join over
// TLS Raft and gRPC; an admin's write through a follower is forwarded to
// the leader over TLS; each call is admitted by the caller's role (a worker
// may register and heartbeat, not list workers or submit jobs); a client
// without a certificate, with another CA's, or a server whose certificate
// is not a coordinator's, is refused with a reason.
func TestTLSCluster(t *testing.T) {
	ca := pki.NewTestCA(t)
	coord := ca.Identity(t, pki.RoleCoordinator, "coord")
	cl := NewTestCluster(t, 3, func(c *Config) { c.TLS = coord })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var follower *Server
	for _, s := range cl.Nodes {
		if !s.IsLeader() {
			follower = s
		}
	}
	admin := api.NewCoordinatorClient(DialTLS(t, ca.Identity(t, pki.RoleAdmin, "alice"), follower.Addr()))
	sub, err := admin.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "tls", GlobalBatch: 4}})
	if err != nil {
		t.Fatalf("admin submit through a follower: %v", err)
	}
	worker := api.NewCoordinatorClient(DialTLS(t, ca.Identity(t, pki.RoleWorker, "w1"), follower.Addr()))
	if _, err := worker.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w1", JobId: sub.GetJob().GetId(), Profile: profile("127.0.0.1:9", 1)}); err != nil {
		t.Fatalf("worker register: %v", err)
	}
	if _, err := worker.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w1"}); err != nil {
		t.Fatalf("worker heartbeat: %v", err)
	}
	if _, err := worker.GetJob(ctx, &api.GetJobRequest{JobId: sub.GetJob().GetId()}); err != nil {
		t.Fatalf("worker reads its job: %v", err)
	}
	for name, call := range map[string]func() error{
		"ListWorkers": func() error { _, err := worker.ListWorkers(ctx, &api.ListWorkersRequest{}); return err },
		"SubmitJob": func() error {
			_, err := worker.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "tls", GlobalBatch: 4}})
			return err
		},
		"CancelJob": func() error {
			_, err := worker.CancelJob(ctx, &api.CancelJobRequest{JobId: sub.GetJob().GetId()})
			return err
		},
	} {
		err := call()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "a worker certificate (w1) may not call "+name) {
			t.Fatalf("worker calling %s: %v", name, err)
		}
	}
	for { // the follower answers from its replica, which may lag the leader's
		ws, err := admin.ListWorkers(ctx, &api.ListWorkersRequest{})
		if err != nil {
			t.Fatalf("admin lists workers: %v", err)
		}
		if len(ws.GetWorkers()) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, time.Second)
		t.Cleanup(cancel)
		return c
	}
	plain := api.NewCoordinatorClient(Dial(t, follower.Addr()))
	if _, err := plain.GetJob(short(), &api.GetJobRequest{JobId: sub.GetJob().GetId()}); err == nil {
		t.Fatal("a plain-text client was answered")
	}
	other := pki.NewTestCA(t)
	stranger := api.NewCoordinatorClient(DialTLS(t, other.Identity(t, pki.RoleAdmin, "mallory"), follower.Addr()))
	if _, err := stranger.GetJob(short(), &api.GetJobRequest{JobId: sub.GetJob().GetId()}); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a client of another CA: %v", err)
	}
	// A server holding a worker certificate is no coordinator.
	impostor := NewTestServer(t, func(c *Config) { c.TLS = ca.Identity(t, pki.RoleWorker, "w9") })
	if _, err := admin.GetJob(ctx, &api.GetJobRequest{JobId: sub.GetJob().GetId()}); err != nil {
		t.Fatal(err)
	}
	fooled := api.NewCoordinatorClient(DialTLS(t, ca.Identity(t, pki.RoleAdmin, "bob"), impostor.Addr()))
	if _, err := fooled.ListJobs(short(), &api.ListJobsRequest{}); err == nil || !strings.Contains(err.Error(), "this link admits coordinator") {
		t.Fatalf("a server with a worker certificate: %v", err)
	}
}

// TestTLSRaftAdmitsCoordinatorsOnly: Raft's port refuses a worker's
// certificate at the handshake.
func TestTLSRaftAdmitsCoordinatorsOnly(t *testing.T) {
	ca := pki.NewTestCA(t)
	s := NewTestServer(t, func(c *Config) { c.TLS = ca.Identity(t, pki.RoleCoordinator, "c1") })
	cfg := ca.Identity(t, pki.RoleWorker, "w1").Config(pki.RoleCoordinator)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.RaftAddr(), cfg)
	if err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = c.Read(b[:])
		_ = c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("a worker certificate on the Raft port: %v", err)
	}
}
