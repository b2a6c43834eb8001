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
func TestBenchCoordinatorSmall(t *testing.T) {
	var out, log bytes.Buffer
	root := newRootCmd()
	root.SetArgs([]string{"bench", "coordinator", "--workers", "24", "--jobs", "3", "--duration", "4s", "--warmup", "2s", "--lease", "3s", "--json"})
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
	if !strings.Contains(log.String(), "every job planned") {
		t.Errorf("log: %s", log.String())
	}
}
