package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/loomtrain/loom/api"
)

// TestProgressAggregated: step reports from every rank are answered at once
// but written as one batch entry per ProgressInterval (the newest report of
// each worker), not one entry each; a final report is written at once and
// completes the job; a report for a stale generation is refused at once.
func TestProgressAggregated(t *testing.T) {
	const interval = 400 * time.Millisecond
	s := NewTestServer(t, func(c *Config) {
		c.LeaseTTL = time.Minute
		c.ProgressInterval = interval
	})
	ctx := ctxT(t, 30*time.Second)
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "agg", GlobalBatch: 40, MinWorkers: 4}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.GetJob().GetId()
	for i := range 4 {
		register(ctx, t, c, fmt.Sprintf("w%d", i), job, 9800+i)
	}
	p := WaitRanks(ctx, t, c, job, 4)
	before := s.FSM().AppliedEntries()
	const steps = 25
	for step := int64(1); step <= steps; step++ {
		for i := range 4 {
			r, err := c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: fmt.Sprintf("w%d", i), Generation: p.GetGeneration(), Step: step, Loss: 1 / float64(step)})
			if err != nil || r.GetGeneration() != p.GetGeneration() {
				t.Fatalf("report step %d of w%d: %v %v", step, i, r, err)
			}
		}
	}
	_, err = c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "w0", Generation: p.GetGeneration() - 1, Step: 1})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonStaleGeneration)
	waitFor(t, 5*interval, func() bool { j, _ := s.FSM().Job(job); return j.GetStep() == steps })
	mid := s.FSM().AppliedEntries()
	if n := mid["report_progress"] - before["report_progress"]; n != 0 {
		t.Errorf("%d step reports written as entries of their own", n)
	}
	// 100 reports; the sending took some intervals at most.
	if n := mid["report_progress_batch"] - before["report_progress_batch"]; n < 1 || n > 4 {
		t.Errorf("%d batch entries for %d reports sent within a few intervals", n, 4*steps)
	}
	if h := s.FSM().History(job); len(h.GetPoints()) == 0 || h.GetPoints()[len(h.GetPoints())-1].GetStep() != steps {
		t.Errorf("history after the batches: %v", h.GetPoints())
	}
	// Nothing to write: no entry per interval.
	time.Sleep(3 * interval)
	if got := s.FSM().AppliedEntries(); got["report_progress_batch"] != mid["report_progress_batch"] {
		t.Errorf("batches written with no reports: %d, then %d", mid["report_progress_batch"], got["report_progress_batch"])
	}
	acc := 0.5
	if _, err := c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: "w1", Generation: p.GetGeneration(), Step: steps + 1, Done: true, TestAccuracy: &acc}); err != nil {
		t.Fatal(err)
	}
	if j, _ := s.FSM().Job(job); j.GetState() != api.JobState_JOB_STATE_COMPLETED || j.GetStep() != steps+1 {
		t.Fatalf("job after the final report: %v", j)
	}
	if got := s.FSM().AppliedEntries(); got["report_progress"] != mid["report_progress"]+1 {
		t.Errorf("final report: %d single entries, want %d", got["report_progress"], mid["report_progress"]+1)
	}
}
