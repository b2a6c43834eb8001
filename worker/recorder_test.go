package worker

import (
	"context"
	"errors"
	"net"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens here until the coordinator starts
	conn, err := api.Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := &Agent{cfg: AgentConfig{ID: "w0", JobID: "job-0001", RPCTimeout: 500 * time.Millisecond}, log: zap.NewNop(),
		client: api.NewCoordinatorClient(conn)}
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

	s := coordinator.NewTestServer(t, func(c *coordinator.Config) { c.GRPCAddr = addr })
	c := api.NewCoordinatorClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "j", GlobalBatch: 8}})
	if err != nil || sub.GetJob().GetId() != "job-0001" {
		t.Fatalf("submit: %v %v", sub, err)
	}
	if !r.wait(15 * time.Second) {
		t.Fatalf("%d records still pending after the coordinator (%s) came up", r.pending(), s.Addr())
	}
	r.stop(time.Second)
	j, err := c.GetJob(ctx, &api.GetJobRequest{JobId: "job-0001"})
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
