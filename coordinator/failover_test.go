package coordinator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// TestFailoverSIGKILLLeader runs three coordinator processes, submits a job
// with workers and a plan, SIGKILLs the leader, and checks that a new leader
// is elected with every job, worker and plan intact, that writes resume
// within 2 s, and that the killed node catches up after a restart.
func TestFailoverSIGKILLLeader(t *testing.T) {
	nodes := startProcessCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.grpcAddr)
	}
	conn := Dial(t, addrs...)
	c, cl := api.NewCoordinatorClient(conn), api.NewClusterClient(conn)
	clusterLeader(ctx, t, cl, 3)

	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "survivor", ConfigYaml: []byte("x: 1\n"), GlobalBatch: 96, MinWorkers: 2}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.Job.Id
	for i, g := range []float64{20, 10} {
		if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: fmt.Sprintf("w%d", i), Profile: profile(fmt.Sprintf("127.0.0.1:%d", 9300+i), g)}); err != nil {
			t.Fatal(err)
		}
	}
	// Workers keep their leases through the failover.
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	for _, w := range []string{"w0", "w1"} {
		go func() {
			for hbCtx.Err() == nil {
				cctx, cancel := context.WithTimeout(hbCtx, time.Second)
				_, _ = c.Heartbeat(cctx, &api.HeartbeatRequest{WorkerId: w})
				cancel()
				time.Sleep(300 * time.Millisecond)
			}
		}()
	}
	var before *api.GetJobResponse
	for {
		before, err = c.GetJob(ctx, &api.GetJobRequest{JobId: job})
		if err == nil && len(before.Plan.GetRanks()) == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: job, Step: 10, Path: "survivor/step-00000010", ManifestSha256: "beef"}}); err != nil {
		t.Fatal(err)
	}
	st := clusterLeader(ctx, t, cl, 3)
	var victim *childNode
	for _, n := range nodes {
		if n.id == st.LeaderId {
			victim = n
		}
	}
	// Wait until every node has applied everything before the kill, so the
	// comparison below is about failover, not about replication lag.
	lst, err := api.NewClusterClient(Dial(t, st.LeaderGrpcAddr)).ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitApplied(ctx, t, nodes, lst.AppliedIndex)
	before, err = c.GetJob(ctx, &api.GetJobRequest{JobId: job})
	if err != nil || len(before.Job.Checkpoints) != 1 {
		t.Fatalf("job before kill: %v %v", before, err)
	}

	evBefore, err := c.ListEvents(ctx, &api.ListEventsRequest{JobId: job})
	if err != nil || len(evBefore.GetEvents()) == 0 {
		t.Fatalf("events before kill: %v %v", evBefore, err)
	}

	victim.kill()
	killed := time.Now()
	// Writes go to the survivors; retry until one succeeds.
	var probe *api.SubmitJobResponse
	for {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		probe, err = c.SubmitJob(cctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "probe", GlobalBatch: 1}})
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no write succeeded after killing the leader: %v", err)
		}
	}
	resumed := time.Since(killed)
	st2 := clusterLeader(ctx, t, cl, 3)
	t.Logf("killed leader %s; new leader %s; writes resumed after %v", victim.id, st2.LeaderId, resumed)
	if st2.LeaderId == victim.id {
		t.Fatalf("killed node still reported leader")
	}
	if resumed > 2*time.Second {
		t.Errorf("writes resumed after %v, want < 2s", resumed)
	}
	// Reads on followers may lag; the new leader has applied everything
	// committed before it accepted the probe.
	lc := api.NewCoordinatorClient(Dial(t, st2.LeaderGrpcAddr))
	after, err := lc.GetJob(ctx, &api.GetJobRequest{JobId: job})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(after.Job, before.Job) {
		t.Fatalf("job changed across failover:\nbefore %v\nafter  %v", before.Job, after.Job)
	}
	if after.Plan.GetGeneration() != before.Plan.GetGeneration() || !proto.Equal(after.Plan, before.Plan) {
		t.Fatalf("plan changed across failover:\nbefore %v\nafter  %v", before.Plan, after.Plan)
	}
	// The event log survives: the new leader holds every earlier event of
	// the job, unchanged, and then its own election.
	var evAfter *api.ListEventsResponse
	for {
		evAfter, err = lc.ListEvents(ctx, &api.ListEventsRequest{JobId: job})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(evAfter.GetEvents()); n > len(evBefore.GetEvents()) && evAfter.GetEvents()[n-1].GetKind() == "leader" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no leader event after failover: %v", evAfter)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, e := range evBefore.GetEvents() {
		if !proto.Equal(e, evAfter.GetEvents()[i]) {
			t.Fatalf("event %d changed across failover: %v, now %v", i, e, evAfter.GetEvents()[i])
		}
	}
	if last := evAfter.GetEvents()[len(evAfter.GetEvents())-1]; !strings.Contains(last.GetMessage(), st2.LeaderId+" became leader") {
		t.Fatalf("last event %v, want %s's election", last, st2.LeaderId)
	}
	ws, err := lc.ListWorkers(ctx, &api.ListWorkersRequest{})
	if err != nil || len(ws.Workers) != 2 {
		t.Fatalf("workers after failover: %v %v", ws, err)
	}
	// Heartbeats still land on the new leader.
	if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w0"}); err != nil {
		t.Fatalf("heartbeat after failover: %v", err)
	}

	// The killed node restarts from its data dir and catches up.
	restarted := time.Now()
	victim.start(t, false, "")
	vc := api.NewCoordinatorClient(Dial(t, victim.grpcAddr))
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := vc.GetJob(ctx, &api.GetJobRequest{JobId: probe.Job.Id})
		if err == nil && got.Job.Id == probe.Job.Id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node did not catch up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	jobsOn := func(cc api.CoordinatorClient) []string {
		r, err := cc.ListJobs(ctx, &api.ListJobsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, j := range r.Jobs {
			ids = append(ids, j.Id)
		}
		sort.Strings(ids)
		return ids
	}
	if a, b := fmt.Sprint(jobsOn(vc)), fmt.Sprint(jobsOn(c)); a != b {
		t.Fatalf("restarted node jobs %s, cluster %s", a, b)
	}
	t.Logf("restarted %s served every job %v after its process started", victim.id, time.Since(restarted))
}

// waitApplied waits until every node has applied index idx.
func waitApplied(ctx context.Context, t *testing.T, nodes []*childNode, idx uint64) {
	t.Helper()
	for _, n := range nodes {
		cl := api.NewClusterClient(Dial(t, n.grpcAddr))
		for {
			st, err := cl.ClusterStatus(ctx, &api.ClusterStatusRequest{})
			if err == nil && st.AppliedIndex >= idx {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("node %s did not apply %d: %v %v", n.id, idx, st, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
