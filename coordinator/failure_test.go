package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
)

// TestFailureReportConfirmedByHeartbeats: silence alone removes nobody
// before the lease; a failure report removes the reported generation's
// silent worker at once (not the heartbeating one, not the reporter), with
// the reason recorded, and the next plan leaves it out. Heartbeats renew the
// lease in the leader's memory: no Raft entry.
func TestFailureReportConfirmedByHeartbeats(t *testing.T) {
	s := NewTestServer(t, func(c *Config) {
		c.LeaseTTL = time.Minute // the lease never decides here
		c.FailureConfirm = 300 * time.Millisecond
	})
	ctx := ctxT(t, 30*time.Second)
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	job, watch := submitAndWatch(ctx, t, c, &api.JobSpec{Name: "f", GlobalBatch: 8, MinWorkers: 1})
	inc := map[string]int64{}
	for id, addr := range map[string]string{"alive": "127.0.0.1:9200", "silent": "127.0.0.1:9201"} {
		r, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: id, JobId: job, Profile: profile(addr, 1)})
		if err != nil {
			t.Fatal(err)
		}
		inc[id] = r.GetWorker().GetRegisteredUnixNano()
	}
	var plan *api.Plan
	for plan = nextPlan(t, watch); len(plan.GetRanks()) != 2; plan = nextPlan(t, watch) {
	}

	// "alive" heartbeats every 50 ms; "silent" never does.
	hbCtx, stop := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		for hbCtx.Err() == nil {
			_, _ = c.Heartbeat(hbCtx, &api.HeartbeatRequest{WorkerId: "alive", Incarnation: inc["alive"]})
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-hbDone }()

	before := s.fsm.AppliedIndex()
	time.Sleep(4 * s.cfg.FailureConfirm)
	if _, ok := s.fsm.Worker("silent"); !ok {
		t.Fatal("a silent worker was removed without a failure report")
	}
	if n := s.fsm.AppliedIndex() - before; n > 0 {
		t.Fatalf("%d raft entries for ~24 heartbeats; a lease renewal needs none", n)
	}

	// A report for an older generation is stale and removes nobody.
	if _, err := c.ReportFailure(ctx, &api.ReportFailureRequest{JobId: job, WorkerId: "alive", Incarnation: inc["alive"],
		Generation: plan.GetGeneration() - 1, Error: "old"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * s.cfg.FailureConfirm)
	if _, ok := s.fsm.Worker("silent"); !ok {
		t.Fatal("a report for an older generation removed a worker")
	}

	if _, err := c.ReportFailure(ctx, &api.ReportFailureRequest{JobId: job, WorkerId: "alive", Incarnation: inc["alive"],
		Generation: plan.GetGeneration(), Error: "peer lost: EOF"}); err != nil {
		t.Fatal(err)
	}
	next := nextPlan(t, watch)
	if len(next.GetRanks()) != 1 || next.GetRanks()[0].GetWorkerId() != "alive" {
		t.Fatalf("plan after the confirmed failure: %v", next.GetRanks())
	}
	ws, err := c.ListWorkers(ctx, &api.ListWorkersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ws.GetWorkers()) != 1 || ws.GetWorkers()[0].GetId() != "alive" || len(ws.GetLost()) != 1 {
		t.Fatalf("workers %v, lost %v", ws.GetWorkers(), ws.GetLost())
	}
	if r := ws.GetLost()[0].GetLostReason(); !strings.Contains(r, "alive reported generation") || !strings.Contains(r, "peer lost: EOF") || !strings.Contains(r, "no heartbeat for") {
		t.Fatalf("lost reason %q", r)
	}
}
