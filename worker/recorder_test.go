package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/coordinator"
)

// Checkpoint records made while no coordinator answers are kept and
// retried, in order, until one does: the published checkpoint and a failed
// write both end up on the job, and the callers never waited.
func TestRecorderRetriesUntilTheCoordinatorAnswers(t *testing.T) {
	// The coordinator restarts on the same addresses while the recorder
	// keeps dialing them.
	free := func() string { return "127.0.0.1:" + coordinator.RestartablePort(t) }
	dataDir, grpcAddr, raftAddr := t.TempDir(), free(), free()
	cfg := func(c *coordinator.Config) { c.DataDir, c.GRPCAddr, c.RaftAddr = dataDir, grpcAddr, raftAddr }
	conn, err := api.Dial([]string{grpcAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := api.NewCoordinatorClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The job exists; then its only coordinator goes down.
	s := coordinator.NewTestServer(t, cfg)
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "j", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.GetJob().GetId()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	a := &Agent{cfg: AgentConfig{ID: "w0", JobID: job, RPCTimeout: 500 * time.Millisecond}, log: zap.NewNop(), client: c}
	r := a.startRecorder()
	start := time.Now()
	r.published(checkpoint.Info{Step: 20, Path: "j/step-00000020", ManifestSHA256: "ab"})
	r.failed(40, errors.New("no space left on device"))
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("queueing records took %v: the caller waited for the coordinator", d)
	}
	time.Sleep(time.Second) // a few failed attempts
	if r.pending() != 2 {
		t.Fatalf("%d records pending while no coordinator answers, want 2", r.pending())
	}

	coordinator.NewTestServer(t, cfg) // the same node, restarted from its data directory
	if !r.wait(20 * time.Second) {
		t.Fatalf("%d records still pending after the coordinator came back", r.pending())
	}
	r.stop(time.Second)
	j, err := c.GetJob(ctx, &api.GetJobRequest{JobId: job})
	if err != nil {
		t.Fatal(err)
	}
	ck := j.GetJob().GetCheckpoints()
	if len(ck) != 1 || ck[0].GetStep() != 20 || j.GetJob().GetCheckpointFailures() != 1 ||
		j.GetJob().GetCheckpointFailedStep() != 40 || j.GetJob().GetCheckpointError() != "no space left on device" {
		t.Fatalf("job after the records: checkpoints %v, failures %d at step %d (%q)", ck, j.GetJob().GetCheckpointFailures(),
			j.GetJob().GetCheckpointFailedStep(), j.GetJob().GetCheckpointError())
	}
}
