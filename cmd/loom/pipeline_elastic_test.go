//go:build integ

package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
)

// pipelineElastic is a GPT of 4 blocks that a test cuts into 2 pipeline
// stages (checkpoints are refused with stages, hence disabled).
func pipelineElastic(t *testing.T) elasticJob {
	text, err := data.LoadText("/usr/share/common-licenses", 64)
	if err != nil {
		t.Fatal(err)
	}
	return elasticJob{yaml: `name: gpt-pipe-elastic
seed: 3
model: {kind: gpt, layers: 4, heads: 4, d_model: 64, context: 64, vocab: 256, tie_embeddings: false}
data: {dataset: text, path: /usr/share/common-licenses}
train: {epochs: 1, global_batch: 24, micro_batches: 4}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {disabled: true} # %s
`, batch: 24, n: text.Train.N, seed: 3, maxFinalLoss: 4}
}

// blocksOf is where a plan puts each worker: its stage and blocks.
func blocksOf(p *api.Plan) map[string]string {
	out := map[string]string{}
	for _, rk := range p.GetRanks() {
		blocks := "all"
		if l := p.GetStageLayers(); len(l) > int(rk.GetStage()) {
			blocks = fmt.Sprintf("%d-%d", l[rk.GetStage()].GetFirst(), l[rk.GetStage()].GetLast()-1)
		}
		out[rk.GetWorkerId()] = fmt.Sprintf("stage %d blocks %s", rk.GetStage(), blocks)
	}
	return out
}

// stageMates is how many ranks share worker id's stage in p (0: not in p).
func stageMates(p *api.Plan, id string) int {
	stage := int32(-1)
	for _, rk := range p.GetRanks() {
		if rk.GetWorkerId() == id {
			stage = rk.GetStage()
		}
	}
	n := 0
	for _, rk := range p.GetRanks() {
		if stage >= 0 && rk.GetStage() == stage {
			n++
		}
	}
	return n
}

// Elastic pipeline stages, end to end: a GPT in 2 stages on 2 workers;
// two faster workers join and the plan re-partitions the model (some worker
// that trained holds other blocks afterwards, and takes their state from
// the workers that held them); then a joined worker that shares its stage
// with another is SIGKILLed, and the survivors re-plan and finish. No
// process restarts, the job completes, and every context window is used
// exactly once.
func TestPipelineJoinRepartitionsAndKill(t *testing.T) {
	const steps = 120
	r := startElasticJob(t, steps, pipelineElastic(t), "--pipeline-stages", "2")
	r.waitStep(15)
	x0 := r.joinOn("x0", "cpu:threads=1,slowdown=4")
	x1 := r.joinOn("x1", "cpu:threads=1,slowdown=4")
	// Only the first stage's ranks write sample ledgers: wait for the
	// joiners in a plan, then for steps trained with them.
	joined := r.waitPlanWith("x0", "x1")
	r.waitStep(joined + 10)
	r.mu.Lock()
	plans := append([]*api.Plan(nil), r.plans...)
	r.mu.Unlock()
	moved := ""
	for i := 1; i < len(plans) && moved == ""; i++ {
		before, after := blocksOf(plans[i-1]), blocksOf(plans[i])
		for w, was := range before {
			if now, ok := after[w]; ok && now != was {
				moved = fmt.Sprintf("generation %d: %s moved from %s to %s", plans[i].GetGeneration(), w, was, now)
			}
		}
	}
	if moved == "" {
		var lines []string
		for _, p := range plans {
			lines = append(lines, fmt.Sprintf("generation %d: %v", p.GetGeneration(), blocksOf(p)))
		}
		t.Fatalf("no plan moved a worker's blocks after the join:\n%s", strings.Join(lines, "\n"))
	}
	t.Log(moved)
	r.waitStep(joined + 30)
	r.mu.Lock()
	last := r.plans[len(r.plans)-1]
	r.mu.Unlock()
	victim, survivor := x1, x0
	vid := "x1"
	if stageMates(last, "x1") < 2 {
		victim, survivor, vid = x0, x1, "x0"
	}
	if stageMates(last, vid) < 2 {
		t.Fatalf("neither joined worker shares a stage in generation %d: %v", last.GetGeneration(), blocksOf(last))
	}
	killAt := time.Now()
	_ = syscall.Kill(victim.cmd.Process.Pid, syscall.SIGKILL)
	r.finish()
	recovery := r.firstStepAfter(0, killAt)
	t.Logf("SIGKILL of %s: next completed step after %v\n%s", vid, recovery.Round(time.Millisecond), survivor.stderr)
	sid := map[*proc]string{x0: "x0", x1: "x1"}[survivor]
	if err := waitExit(t, survivor, sid, time.Minute); err != nil {
		t.Fatalf("joined worker %s exited with %v\n%s", sid, err, survivor.stderr)
	}
	if !strings.Contains(victim.stderr.String(), "generation started") {
		t.Fatalf("killed worker %s never trained:\n%s", vid, victim.stderr)
	}
}

// waitPlanWith waits for a plan that has every worker of ids and returns
// the job's step then.
func (r *elasticRun) waitPlanWith(ids ...string) int64 {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		found := false
		for _, p := range r.plans {
			all := true
			for _, id := range ids {
				all = all && hasWorker(p, id)
			}
			found = found || all
		}
		r.mu.Unlock()
		if found {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := r.client.GetJob(ctx, &api.GetJobRequest{JobId: r.jobID})
			cancel()
			if err == nil {
				return resp.GetJob().GetStep()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("no plan has workers %v\n%s", ids, r.log())
	return 0
}

// A stage lost with every worker that held it: a GPT in 2 stages on 3
// workers of a standalone coordinator (all three processes the test's, so
// any may die), checkpoints every 10 steps; the worker alone in its stage
// is SIGKILLed. No worker holds its layers any more, so the two survivors
// re-plan and go back to the last checkpoint, each loading the layers it
// is given from the stages' shards, without a restart; the job completes
// and, the retrained steps counted once, every window is used exactly
// once.
func TestPipelineStageLostRestoresFromCheckpoint(t *testing.T) {
	dir := t.TempDir()
	var held []net.Listener
	addrs := make([]string, 2)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		addrs[i] = l.Addr().String()
	}
	for _, l := range held {
		_ = l.Close()
	}
	coord := loomCmd(t, "coordinator", "--id", "c1", "--data-dir", filepath.Join(dir, "c1"), "--grpc-addr", addrs[0], "--raft-addr", addrs[1],
		"--bootstrap", "--lease", "3s")
	var coordLog strings.Builder
	coordMu := &sync.Mutex{}
	coord.Stderr = &syncWriter{w: &coordLog, mu: coordMu}
	if err := coord.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = coord.Process.Signal(syscall.SIGTERM); _ = coord.Wait() })
	ej := pipelineElastic(t)
	ej.yaml = strings.Replace(ej.yaml, "checkpoint: {disabled: true} # %s", "checkpoint: {dir: %s, every_steps: 10, keep: 0}", 1)
	r := &elasticRun{t: t, dir: dir, steps: 100, job: ej, ledger: filepath.Join(dir, "ledger"), addr: addrs[0]}
	job := writeJob(t, fmt.Sprintf(ej.yaml, filepath.Join(dir, "ckpt")))
	r.launcher = loomCmd(t, "launch", job, "--coordinator", addrs[0], "--pipeline-stages", "2", "--max-steps", "100", "--json")
	r.launcher.Stdout = &r.stdout
	r.launcher.Stderr = &syncWriter{w: &r.logText, mu: &r.mu}
	time.Sleep(time.Second) // the coordinator binds and elects itself
	if err := r.launcher.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for r.jobID == "" {
		if m := submittedRE.FindStringSubmatch(r.log()); m != nil {
			r.jobID = m[1]
		} else if time.Now().After(deadline) {
			coordMu.Lock()
			defer coordMu.Unlock()
			t.Fatalf("launcher did not report the submitted job\n%s\ncoordinator:\n%s", r.log(), coordLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.client = api.NewCoordinatorClient(mustDial(t, r.addr))
	ws := map[string]*proc{}
	for _, id := range []string{"x0", "x1", "x2"} {
		ws[id] = r.start(id, id, elasticDevice)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for id, p := range ws {
				t.Logf("---- %s ----\n%s", id, p.stderr)
			}
			t.Logf("---- launcher ----\n%s", r.log())
		}
	})
	r.waitStep(25) // past the checkpoints of steps 10 and 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	resp, err := r.client.GetJob(ctx, &api.GetJobRequest{JobId: r.jobID})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var alone string
	for id := range ws {
		if stageMates(resp.GetPlan(), id) == 1 {
			alone = id
		}
	}
	if alone == "" {
		t.Fatalf("no worker alone in its stage: %v", blocksOf(resp.GetPlan()))
	}
	_ = syscall.Kill(ws[alone].cmd.Process.Pid, syscall.SIGKILL)
	r.finish()
	var restored bool
	for id, p := range ws {
		if id == alone {
			continue
		}
		if err := waitExit(t, p, id, time.Minute); err != nil {
			t.Fatalf("%s exited with %v\n%s", id, err, p.stderr)
		}
		restored = restored || strings.Contains(p.stderr.String(), "went back to its last checkpoint")
	}
	if !restored {
		t.Fatalf("no survivor went back to the checkpoint after %s (alone in its stage) died\n%s", alone, ws[alone].stderr)
	}
}

// syncWriter serialises writes into w with mu, which readers share.
type syncWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
