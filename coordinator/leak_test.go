package coordinator

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomtrain/loom/api"
)

// TestCloseLeavesNoGoroutines: a coordinator that served a client, a plan
// watch and a lease expiry leaves no goroutine behind after Close.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := TestConfig(t, "coord-0")
	cfg.LeaseTTL = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := api.Dial([]string{s.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	c := api.NewCoordinatorClient(conn)
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "leak", GlobalBatch: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w", Profile: profile("127.0.0.1:9500", 1)}); err != nil {
		t.Fatal(err)
	}
	w, err := c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: sub.Job.Id})
	if err != nil {
		t.Fatal(err)
	}
	// Plans: waiting, then with the worker, then without it after its lease.
	sawRanks := false
	for {
		p, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Ranks) == 1 {
			sawRanks = true
		} else if sawRanks {
			break
		}
	}
	_ = conn.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
