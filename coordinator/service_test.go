package coordinator

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func profile(addr string, gflops float64) *api.DeviceProfile {
	return &api.DeviceProfile{DeviceName: "cpu", Cores: 1, Threads: 2, Gflops: map[string]float64{"f32": gflops}, MemoryBytes: 1 << 30, CollectiveAddr: addr}
}

// wantReason asserts err is a gRPC status with code and loom reason.
func wantReason(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s/%s, got success", code, reason)
	}
	if st, _ := status.FromError(err); st.Code() != code || api.ReasonOf(err) != reason {
		t.Fatalf("want %s/%s, got %s/%s: %v", code, reason, st.Code(), api.ReasonOf(err), err)
	}
}

// submitAndWatch submits spec and opens a watch on its plan.
func submitAndWatch(ctx context.Context, t *testing.T, c api.CoordinatorClient, spec *api.JobSpec) (string, api.Coordinator_WatchPlanClient) {
	t.Helper()
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	watch, err := c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: sub.GetJob().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	return sub.GetJob().GetId(), watch
}

// nextPlan receives from a plan stream, failing the test on error.
func nextPlan(t *testing.T, s api.Coordinator_WatchPlanClient) *api.Plan {
	t.Helper()
	p, err := s.Recv()
	if err != nil {
		t.Fatalf("watch plan: %v", err)
	}
	return p
}

// TestEmbeddedJobLifecycle: submit, register, plan, progress, checkpoint,
// lease expiry and a new generation, cancel.
func TestEmbeddedJobLifecycle(t *testing.T) {
	s := NewTestServer(t, func(c *Config) { c.LeaseTTL = 600 * time.Millisecond })
	ctx := ctxT(t, 30*time.Second)
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))

	job, watch := submitAndWatch(ctx, t, c, &api.JobSpec{Name: "mnist", ConfigYaml: []byte("a: 1\n"), GlobalBatch: 100, MinWorkers: 1})
	p := nextPlan(t, watch)
	if len(p.Ranks) != 0 || p.Reason == "" {
		t.Fatalf("first plan should wait for workers: %v", p)
	}
	for i, g := range []float64{30, 10} {
		if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: fmt.Sprintf("w%d", i), Profile: profile(fmt.Sprintf("127.0.0.1:%d", 9000+i), g)}); err != nil {
			t.Fatal(err)
		}
	}
	// Keep both alive while waiting for the two-rank plan.
	for len(p.Ranks) < 2 {
		p = nextPlan(t, watch)
	}
	if p.Ranks[0].WorkerId != "w0" || p.Ranks[0].BatchShare != 75 || p.Ranks[1].BatchShare != 25 {
		t.Fatalf("plan shares not proportional to speed: %v", p)
	}
	gen := p.Generation
	// Progress on the current generation is accepted and recorded.
	if _, err := c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "w0", Generation: gen, Step: 3, Loss: 1.5, Samples: 75, StepSeconds: 0.5}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: job, Step: 3, Path: "mnist/step-00000003", ManifestSha256: "aa"}}); err != nil {
		t.Fatal(err)
	}
	gj, err := c.GetJob(ctx, &api.GetJobRequest{JobId: job})
	if err != nil || gj.Job.Step != 3 || len(gj.Job.Checkpoints) != 1 || gj.Plan.GetGeneration() != gen || gj.Job.State != api.JobState_JOB_STATE_RUNNING {
		t.Fatalf("get job: %v %v", gj, err)
	}
	// w0 heartbeats, w1 goes silent: its lease expires through Raft and a
	// new generation without it appears.
	start := time.Now()
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		for hbCtx.Err() == nil {
			_, _ = c.Heartbeat(hbCtx, &api.HeartbeatRequest{WorkerId: "w0"})
			time.Sleep(100 * time.Millisecond)
		}
	}()
	for len(p.Ranks) != 1 {
		p = nextPlan(t, watch)
	}
	if p.Ranks[0].WorkerId != "w0" || p.Ranks[0].BatchShare != 100 || p.Generation <= gen {
		t.Fatalf("plan after expiry: %v", p)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("lease expiry took %v with a 600ms lease", el)
	}
	ws, _ := c.ListWorkers(ctx, &api.ListWorkersRequest{})
	if len(ws.Workers) != 1 || ws.Workers[0].Id != "w0" {
		t.Fatalf("workers after expiry: %v", ws.Workers)
	}
	// The old generation is now stale.
	_, err = c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "w0", Generation: gen, Step: 4})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonStaleGeneration)
	// An expired worker's heartbeat is refused; it must register again.
	_, err = c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w1"})
	wantReason(t, err, codes.NotFound, api.ReasonUnknownWorker)

	// Cancel ends the watch cleanly.
	if _, err := c.CancelJob(ctx, &api.CancelJobRequest{JobId: job}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := watch.Recv()
		if err != nil {
			if status.Code(err) != codes.OK && err.Error() != "EOF" {
				t.Fatalf("watch after cancel: %v", err)
			}
			break
		}
	}
}

// TestBadInputRefused: each bad request is refused with a code and reason.
func TestBadInputRefused(t *testing.T) {
	s := NewTestServer(t, nil)
	ctx := ctxT(t, 20*time.Second)
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))

	reg := &api.RegisterWorkerRequest{WorkerId: "dup", Profile: profile("127.0.0.1:9100", 1)}
	if _, err := c.RegisterWorker(ctx, reg); err != nil {
		t.Fatal(err)
	}
	// The same worker retrying (same profile) keeps its incarnation.
	first, err := c.RegisterWorker(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.RegisterWorker(ctx, reg)
	if err != nil || again.GetWorker().GetRegisteredUnixNano() != first.GetWorker().GetRegisteredUnixNano() {
		t.Fatalf("retried registration: %v, %v", again, err)
	}
	// A second process claiming the id (another collective address: a
	// restarted worker) takes it over; the old process is fenced off.
	took, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "dup", Profile: profile("127.0.0.1:9101", 1)})
	if err != nil {
		t.Fatalf("takeover: %v", err)
	}
	oldInc, newInc := first.GetWorker().GetRegisteredUnixNano(), took.GetWorker().GetRegisteredUnixNano()
	if newInc == oldInc || took.GetWorker().GetProfile().GetCollectiveAddr() != "127.0.0.1:9101" {
		t.Fatalf("takeover kept the old registration: %v", took.GetWorker())
	}
	_, err = c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "dup", Incarnation: oldInc})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonSuperseded)
	if !strings.Contains(err.Error(), "127.0.0.1:9101") {
		t.Fatalf("superseded refusal does not name the new holder: %v", err)
	}
	_, err = c.DeregisterWorker(ctx, &api.DeregisterWorkerRequest{WorkerId: "dup", Incarnation: oldInc})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonSuperseded)
	_, err = c.ReportFailure(ctx, &api.ReportFailureRequest{JobId: "j", WorkerId: "dup", Incarnation: oldInc})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonSuperseded)
	if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "dup", Incarnation: newInc}); err != nil {
		t.Fatalf("new incarnation's heartbeat: %v", err)
	}
	// A retried submit with a request id returns the same job.
	s1, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "idem", GlobalBatch: 4}, RequestId: "req-1"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "idem", GlobalBatch: 4}, RequestId: "req-1"})
	if err != nil || s2.Job.Id != s1.Job.Id {
		t.Fatalf("retried submit made %v (first %s): %v", s2.GetJob().GetId(), s1.Job.Id, err)
	}
	if _, err := c.CancelJob(ctx, &api.CancelJobRequest{JobId: s1.Job.Id}); err != nil {
		t.Fatal(err)
	}

	w, err := c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: "job-9999"})
	if err == nil {
		_, err = w.Recv()
	}
	wantReason(t, err, codes.NotFound, api.ReasonUnknownJob)

	_, err = c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "x", GlobalBatch: -1}})
	wantReason(t, err, codes.InvalidArgument, api.ReasonInvalidArgument)

	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "j", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.Job.Id
	// Wait for the plan that includes "dup".
	watch, err := c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: job})
	if err != nil {
		t.Fatal(err)
	}
	p := nextPlan(t, watch)
	for len(p.Ranks) == 0 {
		p = nextPlan(t, watch)
	}
	_, err = c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "dup", Generation: p.Generation + 5, Step: 1})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonStaleGeneration)
	_, err = c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "stranger", Generation: p.Generation, Step: 1})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonNotInPlan)
	_, err = c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: "job-4242", WorkerId: "dup", Generation: 1})
	wantReason(t, err, codes.NotFound, api.ReasonUnknownJob)
	_, err = c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: job, Step: 2, Path: "j/step-00000002", ManifestSha256: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: job, Step: 1, Path: "j/step-00000001", ManifestSha256: "y"}})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonStaleCheckpoint)
	// A record must name its job's directory and its own step: nothing
	// outside the checkpoint root (issue 23: "../../../etc/..." was accepted).
	for _, path := range []string{"../../../etc/passwd", "/etc/step-00000003", "j/../step-00000003", "other/step-00000003", "j/step-00000004", "j/step-3"} {
		_, err = c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: job, Step: 3, Path: path, ManifestSha256: "z"}})
		wantReason(t, err, codes.InvalidArgument, api.ReasonInvalidArgument)
	}
	_, err = c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "noaddr", Profile: &api.DeviceProfile{}})
	wantReason(t, err, codes.InvalidArgument, api.ReasonInvalidArgument)

	// A node of another cluster cannot join.
	cfg := TestConfig(t, "intruder")
	cfg.ClusterID = "someone-else"
	cfg.Join = []string{s.Addr()}
	_, err = Start(ctx, cfg)
	if err == nil || api.ReasonOf(errorsUnwrapStatus(err)) != api.ReasonClusterIDMismatch {
		t.Fatalf("join with another cluster id: %v", err)
	}
	cl := api.NewClusterClient(Dial(t, s.Addr()))
	_, err = cl.Join(ctx, &api.JoinRequest{ClusterId: "zzz", NodeId: "n", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonClusterIDMismatch)
	// A node that claims the id of a member at other addresses is refused,
	// naming the member; the member's addresses are unchanged.
	_, err = cl.Join(ctx, &api.JoinRequest{ClusterId: "loom", NodeId: s.cfg.NodeID, RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"})
	wantReason(t, err, codes.InvalidArgument, api.ReasonInvalidArgument)
	if !strings.Contains(err.Error(), "already a member (raft "+s.RaftAddr()) {
		t.Fatalf("refusal does not name the member: %v", err)
	}
	// The member's own join, repeated, is a retry.
	if _, err := cl.Join(ctx, &api.JoinRequest{ClusterId: "loom", NodeId: s.cfg.NodeID, RaftAddr: s.RaftAddr(), GrpcAddr: s.Addr()}); err != nil {
		t.Fatalf("a member's repeated join: %v", err)
	}
	st, err := cl.ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil || len(st.Members) != 1 || st.ClusterId != "loom" || st.Members[0].GetRaftAddr() != s.RaftAddr() || st.Members[0].GetGrpcAddr() != s.Addr() {
		t.Fatalf("refused joins changed membership: %v %v", st, err)
	}
}

// errorsUnwrapStatus digs the gRPC status error out of a wrapped error.
func errorsUnwrapStatus(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok && api.ReasonOf(e) != "" {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}

// TestInProcessClusterForwards: writes sent to a follower reach the leader;
// reads on a follower see them; stopping the leader elects another.
func TestInProcessClusterForwards(t *testing.T) {
	tc := NewTestCluster(t, 3)
	ctx := ctxT(t, 40*time.Second)
	leader := tc.Leader()
	var follower *Server
	for _, n := range tc.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	fc := api.NewCoordinatorClient(Dial(t, follower.Addr()))
	sub, err := fc.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "fwd", GlobalBatch: 10}})
	if err != nil {
		t.Fatalf("submit via follower: %v", err)
	}
	if _, err := fc.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w", Profile: profile("127.0.0.1:9200", 1)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := leader.FSM().Job(sub.Job.Id); !ok {
		t.Fatal("leader lacks the job written through a follower")
	}
	// A plan watched on a follower sees the leader's plan.
	w, err := fc.WatchPlan(ctx, &api.WatchPlanRequest{JobId: sub.Job.Id})
	if err != nil {
		t.Fatal(err)
	}
	for p := nextPlan(t, w); len(p.Ranks) != 1; p = nextPlan(t, w) {
	}
	// A job no node knows is refused by a follower too, after its short
	// wait for replication.
	_, err = fc.GetJob(ctx, &api.GetJobRequest{JobId: "job-9999"})
	wantReason(t, err, codes.NotFound, api.ReasonUnknownJob)
	st, err := api.NewClusterClient(Dial(t, follower.Addr())).ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil || len(st.Members) != 3 || st.LeaderId != leader.ID() {
		t.Fatalf("cluster status from follower: %v %v", st, err)
	}
	for _, m := range st.Members {
		if m.GrpcAddr == "" || m.Suffrage != "voter" {
			t.Fatalf("member %v lacks address or vote", m)
		}
	}
	// Remove a follower through the API: the cluster shrinks to two.
	cl := api.NewClusterClient(Dial(t, tc.Addrs()...))
	if _, err := cl.RemoveCoordinator(ctx, &api.RemoveCoordinatorRequest{NodeId: follower.ID()}); err != nil {
		t.Fatal(err)
	}
	_, err = cl.RemoveCoordinator(ctx, &api.RemoveCoordinatorRequest{NodeId: "ghost"})
	wantReason(t, err, codes.NotFound, api.ReasonUnknownNode)
	if st := leader.Status(); len(st.Members) != 2 {
		t.Fatalf("members after remove: %v", st.Members)
	}
}

// The grpc.health.v1 service answers probes: the process is alive, and
// the API serves once the node knows a leader.
func TestHealthService(t *testing.T) {
	s := NewTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(Dial(t, s.Addr()))
	for _, svc := range []string{"", HealthService} {
		for {
			r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("service %q: %v %v", svc, r, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// The HTTP probes: /healthz while serving, /readyz 200 with a leader and
// 503 once the node has none (its cluster's other members gone).
func TestHealthHandler(t *testing.T) {
	cl := NewTestCluster(t, 2)
	follower := cl.Nodes[1]
	if follower.IsLeader() {
		follower = cl.Nodes[0]
	}
	h := follower.HealthHandler()
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if c := get("/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz %d", c)
	}
	if c := get("/readyz"); c != http.StatusOK {
		t.Fatalf("/readyz with a leader: %d", c)
	}
	if c := get("/nope"); c != http.StatusNotFound {
		t.Fatalf("/nope %d", c)
	}
	for i, s := range cl.Nodes {
		if s != follower {
			cl.Stop(i)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for get("/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 10 s after the leader stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c := get("/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz without a leader: %d", c)
	}
}

// A node bound to every interface advertises a routable address (with its
// port), which is what it records and what reaches it.
func TestAdvertisedAddress(t *testing.T) {
	raftPort := freePort(t)
	s := NewTestServer(t, func(c *Config) { c.GRPCAddr, c.RaftAddr = "0.0.0.0:0", "0.0.0.0:"+raftPort })
	host, port, _ := net.SplitHostPort(s.Addr())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() || ip.IsLoopback() || port == "0" {
		t.Fatalf("advertised gRPC address %s", s.Addr())
	}
	if rh, rp, _ := net.SplitHostPort(s.RaftAddr()); rh != host || rp != raftPort {
		t.Fatalf("advertised raft address %s, want %s:%s", s.RaftAddr(), host, raftPort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := api.NewClusterClient(Dial(t, s.Addr())).ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.GetMembers() {
		if m.GetGrpcAddr() != s.Addr() {
			t.Fatalf("member recorded at %s, advertised %s", m.GetGrpcAddr(), s.Addr())
		}
	}
	cfg := TestConfig(t, "c9")
	cfg.RaftAddr = "0.0.0.0:0"
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "give a port") {
		t.Fatalf("raft on 0.0.0.0:0: %v", err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}
