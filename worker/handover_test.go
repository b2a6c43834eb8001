package worker

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

func handoverJob(t *testing.T, steps int) *jobspec.Job {
	t.Helper()
	return handoverJobCkpt(t, steps, "{disabled: true}")
}

func handoverJobCkpt(t *testing.T, steps int, ckpt string) *jobspec.Job {
	t.Helper()
	path := filepath.Join(t.TempDir(), "corpus.txt")
	text := strings.Repeat("the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n", 40)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := jobspec.Parse("gpt.yaml", []byte(fmt.Sprintf(`name: gpt-handover
seed: 3
model: {kind: gpt, layers: 4, heads: 2, d_model: 32, context: 16, vocab: 256, tie_embeddings: false}
data: {dataset: text, path: %s}
cluster: {pipeline_stages: auto}
train: {epochs: 3, max_steps: %d, global_batch: 32, precision: fp32, micro_batches: 4}
optimizer: {kind: adamw, lr: 0.003, weight_decay: 0.01}
schedule: {kind: cosine, warmup_steps: 5}
checkpoint: %s
`, path, steps, ckpt)))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// solo trains job's first steps on one worker alone and returns the data
// and the parameters it ends with, by name.
func solo(t *testing.T, job *jobspec.Job, steps int) (*data.Split, map[string][]float32) {
	t.Helper()
	split, err := train.OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := cpu.New(cpu.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	single, err := train.NewTrainer(job, dev, split, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range steps {
		single.Step()
	}
	want := map[string][]float32{}
	for _, p := range single.Params() {
		want[p.Name] = p.Value
	}
	return split, want
}

// assertSolo fails unless worker w's parameters (its stage's) are want's
// to relative 1e-5.
func assertSolo(t *testing.T, w string, tr *train.Trainer, want map[string][]float32) {
	t.Helper()
	var num, den float64
	for _, p := range tr.Params() {
		for i, v := range p.Value {
			d := float64(v - want[p.Name][i])
			num += d * d
			den += float64(want[p.Name][i]) * float64(want[p.Name][i])
		}
	}
	if rel := math.Sqrt(num / den); !(rel < 1e-5) {
		t.Fatalf("%s: parameters differ from one worker's by %g (relative)", w, rel)
	}
}

// planStage is one stage of a test plan: its blocks and its workers.
type planStage struct {
	first, last int
	workers     []string
}

// handoverRun is the workers of a handover test and what they hold.
type handoverRun struct {
	t     *testing.T
	job   *jobspec.Job
	split *data.Split
	held  map[string]*train.Trainer
	// recorded is the checkpoints every worker knows of, by step.
	recorded map[int]string
	// ck and ledger, if set, are each worker's checkpointer and sample
	// ledger.
	ck     map[string]*train.Checkpointer
	ledger map[string]*strings.Builder
}

// generation runs one plan generation of stages (one stage: plain data
// parallelism) on loopback TCP: every worker joins it, hands over, and
// trains until step `until`. It returns each worker's handover error.
func (h *handoverRun) generation(gen int64, stages []planStage, until int) map[string]error {
	t := h.t
	var ids []string
	plan := &api.Plan{Generation: gen, GlobalBatch: 32, PipelineStages: int32(len(stages))}
	for s, st := range stages {
		plan.StageLayers = append(plan.StageLayers, &api.LayerRange{First: int32(st.first), Last: int32(st.last)})
		for _, w := range st.workers {
			plan.Ranks = append(plan.Ranks, &api.Rank{Rank: int32(len(ids)), WorkerId: w, Stage: int32(s), BatchShare: int64(32 / len(st.workers))})
			ids = append(ids, w)
		}
	}
	if len(stages) == 1 {
		plan.StageLayers = nil
	}
	lns, addrs, err := collective.LoopbackListeners(len(ids))
	if err != nil {
		t.Fatal(err)
	}
	for r, a := range addrs {
		plan.Ranks[r].CollectiveAddr = a
	}
	errs := make([]error, len(ids))
	helds, nexts := make([]*train.Trainer, len(ids)), make([]*train.Trainer, len(ids))
	cks, ledgers := make([]*train.Checkpointer, len(ids)), make([]*strings.Builder, len(ids))
	for r, id := range ids {
		helds[r], cks[r], ledgers[r] = h.held[id], h.ck[id], h.ledger[id]
	}
	run := collective.RunRanks(len(ids), func(r int) error {
		g, err := joinGeneration(context.Background(), plan, ids[r], lns[r], "", linkOpts{handover: true}, nil)
		if err != nil {
			return err
		}
		defer g.close()
		held := helds[r]
		next := held
		layers := model.StageRange{First: 0, Last: 4}
		if g.pipeline != nil {
			g.pipeline.Micro = h.job.PipelineMicro(len(g.pipeline.Stages))
			layers = g.layers
		}
		if next == nil || next.Range() != layers {
			dev, err := cpu.New(cpu.Config{Threads: 1})
			if err != nil {
				return err
			}
			if g.pipeline != nil {
				next, err = train.NewStageTrainer(h.job, dev, h.split, nil, layers, g.pipeline)
			} else {
				next, err = train.NewTrainer(h.job, dev, h.split, nil)
			}
			if err != nil {
				return err
			}
			if ledgers[r] != nil {
				next.Ledger = ledgers[r]
			}
		}
		if _, errs[r] = g.handover(context.Background(), held, held != nil, next, 4, h.recorded); errs[r] != nil {
			return nil
		}
		nexts[r] = next
		next.Generation = gen
		_, err = next.RunSteps(context.Background(), train.Loop{
			Sync: g.gradSync(), Shares: g.shares, Pipeline: g.pipeline, World: g.world(), Checkpointer: cks[r], Lead: g.rank == 0,
			Before: func() (bool, error) { return next.Steps()+1 >= until, nil },
		})
		return err
	})
	out := map[string]error{}
	for r, err := range run {
		if err != nil {
			t.Fatalf("generation %d, %s: %v", gen, ids[r], err)
		}
		out[ids[r]] = errs[r]
		if nexts[r] != nil {
			h.held[ids[r]] = nexts[r]
		}
	}
	return out
}

// A pipeline job's layers move with its plans and no process restarts:
// two stages, then three workers with other cuts (one of them new, so
// every block moves to a worker that did not hold it), then plain data
// parallelism over two workers (each needs the whole model from stages
// that held parts of it). Each worker ends where one worker training
// every step alone does, to relative 1e-5 (fp32): no step, sample or
// optimizer state is lost or repeated on the way.
func TestHandoverRepartitions(t *testing.T) {
	const steps = 12
	job := handoverJob(t, steps)
	split, want := solo(t, job, steps)
	h := &handoverRun{t: t, job: job, split: split, held: map[string]*train.Trainer{}}
	for gen, stages := range [][]planStage{
		{{0, 2, []string{"a"}}, {2, 4, []string{"b"}}},
		{{0, 1, []string{"b"}}, {1, 4, []string{"c", "a"}}},
		{{0, 4, []string{"c", "b"}}},
	} {
		for w, err := range h.generation(int64(gen+1), stages, 4*(gen+1)) {
			t.Logf("gen %d %s: step %d", gen+1, w, h.held[w].Steps())
			if err != nil {
				t.Fatalf("generation %d, %s: handover: %v", gen+1, w, err)
			}
		}
	}
	for _, w := range []string{"b", "c"} {
		tr := h.held[w]
		if tr.Steps() != steps {
			t.Fatalf("%s at step %d, want %d", w, tr.Steps(), steps)
		}
		assertSolo(t, w, tr, want)
	}
}

// When every worker that held some blocks is gone, every rank of the new
// plan fails alike and names the blocks and the step.
func TestHandoverNamesLostBlocks(t *testing.T) {
	job := handoverJob(t, 8)
	split, err := train.OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	h := &handoverRun{t: t, job: job, split: split, held: map[string]*train.Trainer{}}
	for w, err := range h.generation(1, []planStage{{0, 3, []string{"a"}}, {3, 4, []string{"b"}}}, 2) {
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
	}
	// b (block 3 and the head) is lost; c is new.
	errs := h.generation(2, []planStage{{0, 2, []string{"a"}}, {2, 4, []string{"c"}}}, 4)
	for _, w := range []string{"a", "c"} {
		err := errs[w]
		if err == nil || !strings.Contains(err.Error(), "no worker holds block 3, the head at step 2") {
			t.Fatalf("%s: handover error %v, want one naming block 3 and the head at step 2", w, err)
		}
	}
}

// When every worker that held some layers is gone, the job goes back to
// its last checkpoint without a restart: each rank of the new plan loads
// the layers it is given from the shards the old stages wrote, the sample
// ledger records the rollback, and training from there ends where one
// worker training every step alone does.
func TestHandoverRestoresLostLayersFromCheckpoint(t *testing.T) {
	const steps = 10
	dir := t.TempDir()
	job := handoverJobCkpt(t, steps, fmt.Sprintf("{dir: %s, every_steps: 2, keep: 0}", dir))
	split, want := solo(t, job, steps)
	h := &handoverRun{t: t, job: job, split: split, held: map[string]*train.Trainer{}, recorded: map[int]string{},
		ck: map[string]*train.Checkpointer{}, ledger: map[string]*strings.Builder{}}
	var mu sync.Mutex
	for _, w := range []string{"a", "b", "c"} {
		ck, err := train.NewCheckpointer(job, nil, func(i checkpoint.Info) {
			mu.Lock()
			h.recorded[i.Step] = i.Path
			mu.Unlock()
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ck.Run = 1
		t.Cleanup(func() { ck.Close() })
		h.ck[w], h.ledger[w] = ck, &strings.Builder{}
	}
	for w, err := range h.generation(1, []planStage{{0, 2, []string{"a"}}, {2, 4, []string{"b"}}}, 5) {
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
	}
	for _, w := range []string{"a", "b"} {
		if err := h.ck[w].Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if h.recorded[4] == "" {
		t.Fatalf("the stages' shards of step 4 were not published: %v", h.recorded)
	}
	// b (blocks 2-3 and the head) is lost at step 5; c is new.
	for w, err := range h.generation(2, []planStage{{0, 1, []string{"a"}}, {1, 4, []string{"c"}}}, steps) {
		if err != nil {
			t.Fatalf("%s: handover: %v", w, err)
		}
	}
	for _, w := range []string{"a", "c"} {
		tr := h.held[w]
		if tr.Steps() != steps {
			t.Fatalf("%s at step %d, want %d", w, tr.Steps(), steps)
		}
		assertSolo(t, w, tr, want)
	}
	if !strings.Contains(h.ledger["a"].String(), `"step":4,"gen":2,"rollback":true`) {
		t.Fatalf("a's ledger has no rollback to step 4 in generation 2:\n%s", h.ledger["a"])
	}
}
