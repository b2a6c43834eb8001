package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// loom bench coordinator, small: three coordinator processes (this test
// binary as loom), 24 simulated workers on 3 jobs. Their heartbeats are
// answered by the leader without a Raft entry: in steady state the log
// grows by the progress batches (one a second) and nothing per worker.
// Then churn (a silence reported by a peer, a drain, two joins), each
// shown by a plan, every plan delivered once; then a leader kill that
// expires no live worker.
func TestBenchCoordinatorSmall(t *testing.T) {
	var out, log bytes.Buffer
	root := newRootCmd()
	root.SetArgs([]string{"bench", "coordinator", "--workers", "24", "--jobs", "3", "--duration", "4s", "--warmup", "2s", "--lease", "3s",
		"--churn", "1", "--churn-duration", "6s", "--planner-stages", "1,8", "--json"})
	root.SetOut(&out)
	root.SetErr(&log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("bench coordinator: %v\n%s", err, log.String())
	}
	var r benchCoordResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	t.Logf("%+v", r)
	if r.Workers != 24 || r.Jobs != 3 || r.HeartbeatErrors != 0 || r.LeaderChanged {
		t.Fatalf("result %+v", r)
	}
	// 24 workers every 250 ms: about 96 a second, all answered by the leader.
	if r.HeartbeatsPerSec < 40 || r.ClientHBPerSec < 40 {
		t.Errorf("heartbeats/s: leader %.0f, workers %.0f, want about 96", r.HeartbeatsPerSec, r.ClientHBPerSec)
	}
	if n := r.EntriesByKind["heartbeat"]; n != 0 {
		t.Errorf("%d heartbeat entries", n)
	}
	// A progress batch a second (and a plan or two if a report raced a
	// generation): far below one entry per heartbeat or per report.
	if r.EntriesPerMinute > 120 || r.EntriesByKind["report_progress_batch"] == 0 {
		t.Errorf("%.0f entries/min (%v)", r.EntriesPerMinute, r.EntriesByKind)
	}
	if r.LeaderRSSMiB <= 0 || r.HeartbeatP99Ms <= 0 {
		t.Errorf("no leader RSS or latency: %+v", r)
	}
	c := r.Churn
	if c == nil || c.Silenced != 1 || c.Drained != 1 || c.Joined != 2 || c.Unseen != 0 {
		t.Fatalf("churn %+v", c)
	}
	// A reported silence is confirmed by the heartbeats' absence within
	// --failure-confirm (1 s), well before the 3 s lease.
	if c.SilenceToPlan.N != 1 || c.SilenceToPlan.MaxMs > 2500 || c.DrainToPlan.N != 1 || c.JoinToPlan.N != 2 {
		t.Errorf("churn timings %+v", c)
	}
	for _, k := range []string{"register_worker", "remove_worker", "drain_worker", "put_plan"} {
		if c.EntriesByKind[k] == 0 {
			t.Errorf("churn wrote no %s entry: %v", k, c.EntriesByKind)
		}
	}
	if f := r.Fail; f == nil || f.NewLeader == "" || f.NewLeader == f.Killed || f.LiveExpired != 0 || f.LeaseExpired != 0 || f.ServingMs <= 0 || f.JoinPlanMs <= 0 {
		t.Errorf("failover %+v", r.Fail)
	}
	if r.Plans.Delivered < 24 || r.Plans.Twice != 0 || r.Plans.Behind != 0 {
		t.Errorf("plans %+v", r.Plans)
	}
	if len(r.Planner) != 2 || r.Planner[0].Ms <= 0 || r.Planner[1].Stages != 8 || r.Planner[1].Ms <= 0 {
		t.Errorf("planner %+v", r.Planner)
	}
	if !strings.Contains(log.String(), "every job planned") {
		t.Errorf("log: %s", log.String())
	}
}
