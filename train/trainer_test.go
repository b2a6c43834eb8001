package train

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/optimizer"
)

var (
	mnistOnce  sync.Once
	mnistSplit *data.Split
	mnistErr   error
)

func mnist(t *testing.T) *data.Split {
	t.Helper()
	mnistOnce.Do(func() { mnistSplit, mnistErr = data.Open("mnist", "") })
	if mnistErr != nil {
		t.Fatal(mnistErr)
	}
	return mnistSplit
}

func smallJob(t *testing.T, precision string, steps int) *jobspec.Job {
	t.Helper()
	j, err := jobspec.Parse("test.yaml", []byte(`name: small
seed: 5
model: {kind: mlp, layers: [784, 64, 10]}
train: {epochs: 1, max_steps: `+strconv.Itoa(steps)+`, global_batch: 128, precision: `+precision+`}
optimizer: {kind: adamw, lr: 0.003}
schedule: {kind: cosine, warmup_steps: 10}
`))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func newTrainer(t *testing.T, job *jobspec.Job, threads int) *Trainer {
	t.Helper()
	dev, err := cpu.New(cpu.Config{Threads: threads})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(job, dev, mnist(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Every precision learns MNIST: a small MLP passes 85% in 120 steps.
func TestTrainerLearnsMNIST(t *testing.T) {
	for _, prec := range []string{"fp32", "bf16", "fp16"} {
		t.Run(prec, func(t *testing.T) {
			tr := newTrainer(t, smallJob(t, prec, 120), 2)
			var steps []int
			s, err := tr.Run(context.Background(), nil, func(p Progress) { steps = append(steps, p.Step) })
			if err != nil {
				t.Fatal(err)
			}
			if s.Steps != 120 || len(steps) != 120 || steps[119] != 120 || s.Samples != 120*128 {
				t.Fatalf("ran %d steps, %d progress calls, %d samples", s.Steps, len(steps), s.Samples)
			}
			if s.TestAccuracy < 0.85 {
				t.Fatalf("%s: test accuracy %.3f < 0.85 (loss %.3f)", prec, s.TestAccuracy, s.FinalLoss)
			}
			if s.SkippedSteps > 3 {
				t.Fatalf("fp16 skipped %d steps", s.SkippedSteps)
			}
		})
	}
}

// Same seed ⇒ bitwise-identical parameters.
func TestTrainerDeterministic(t *testing.T) {
	run := func() []float32 {
		tr := newTrainer(t, smallJob(t, "fp32", 15), 2)
		for i := 0; i < 15; i++ {
			tr.Step()
		}
		var all []float32
		for _, p := range tr.Params() {
			all = append(all, p.Value...)
		}
		return all
	}
	if a, b := run(), run(); !slices.Equal(a, b) {
		t.Fatal("two runs with the same seed differ")
	}
}

func TestTrainerStopsOnCancel(t *testing.T) {
	tr := newTrainer(t, smallJob(t, "fp32", 1000), 1)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := tr.Run(ctx, nil, func(p Progress) {
		if p.Step == 5 {
			cancel()
		}
	})
	if !errors.Is(err, ErrInterrupted) || s == nil || s.Status != "interrupted" || s.Steps != 5 {
		t.Fatalf("err %v summary %+v", err, s)
	}
}

// Each step's progress says where its time went and what it trained on:
// the phases fit in the step, the update is timed, and the batch,
// learning rate and epoch are the step's.
func TestProgressReportsStepTimes(t *testing.T) {
	job := smallJob(t, "fp32", 12)
	job.Optimizer.ClipNorm = 1
	tr := newTrainer(t, job, 1)
	sched := ScheduleOf(job, tr.TotalSteps())
	var got []Progress
	if _, err := tr.Run(context.Background(), nil, func(p Progress) { got = append(got, p) }); err != nil {
		t.Fatal(err)
	}
	for _, p := range got {
		if p.Compute <= 0 || p.Update <= 0 || p.Wait != 0 || p.Compute+p.Update > p.Took {
			t.Fatalf("step %d: compute %v + update %v (wait %v) do not fit in the step's %v", p.Step, p.Compute, p.Update, p.Wait, p.Took)
		}
		if p.Batch != 128 || p.LR != sched.LR(p.Step-1) || p.Epoch != 0 || p.GradNorm <= 0 {
			t.Fatalf("step %d: batch %d lr %v (want %v) epoch %d grad norm %v", p.Step, p.Batch, p.LR, sched.LR(p.Step-1), p.Epoch, p.GradNorm)
		}
	}
	if len(got) != 12 {
		t.Fatalf("%d progress calls", len(got))
	}
}

func TestTrainerRejectsMismatchedModel(t *testing.T) {
	job := smallJob(t, "fp32", 1)
	job.Model.Layers = []int{100, 10}
	dev, _ := cpu.New(cpu.DefaultConfig())
	if _, err := NewTrainer(job, dev, mnist(t), nil); err == nil {
		t.Fatal("input width 100 accepted for 784-feature data")
	}
}

// BenchmarkTrainStep times one optimizer step of the example MLP
// (784-512-256-10) at the given global batch and precision, AdamW on every
// core, plus the PyTorch anchor's configuration (ddp_mlp.sh 1 synthetic: SGD
// momentum, batch 64, one thread).
func BenchmarkTrainStep(b *testing.B) {
	split := mnistForBench(b)
	type bench struct {
		name, opt, prec string
		batch, threads  int
	}
	cases := []bench{{"anchor/sgd/fp32/threads=1/batch=64", "sgd", "fp32", 64, 1}}
	for _, prec := range []string{"fp32", "bf16"} {
		for _, batch := range []int{64, 256} {
			cases = append(cases, bench{"adamw/" + prec + "/batch=" + strconv.Itoa(batch), "adamw", prec, batch, 0})
		}
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			job, err := jobspec.Parse("bench.yaml", []byte(`name: bench
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 100, global_batch: `+strconv.Itoa(c.batch)+`, precision: `+c.prec+`}
optimizer: {kind: `+c.opt+`, lr: 0.01}
`))
			if err != nil {
				b.Fatal(err)
			}
			dev, _ := cpu.New(cpu.Config{Threads: c.threads})
			tr, err := NewTrainer(job, dev, split, nil)
			if err != nil {
				b.Fatal(err)
			}
			tr.Step()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tr.Step()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/step")
			b.ReportMetric(float64(c.batch*b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

func mnistForBench(b *testing.B) *data.Split {
	b.Helper()
	split, err := data.Open("mnist", "")
	if err != nil {
		b.Fatal(err)
	}
	return split
}

// failingSync stands for a ring whose peer died: every sum fails.
type failingSync struct{}

func (failingSync) Start([]float32, int, int)  {}
func (failingSync) Wait(context.Context) error { return errors.New("peer died") }

// A rank that abandons a step leaves only the tentative line it wrote when
// it started its share; reconciled, that line counts exactly when another
// rank completed the step in the same generation (the sum it applied
// included this part), however far that rank has gone on since.
func TestAbandonedStepLedger(t *testing.T) {
	job := smallJob(t, "fp32", 30)
	for _, tc := range []struct {
		name     string
		gen      int64
		counted  bool
		farAhead bool
	}{{"same generation", 7, true, false}, {"later generation", 8, false, false}, {"same generation, source far ahead", 7, true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			var ledA, ledB strings.Builder
			a, b := newTrainer(t, job, 1), newTrainer(t, job, 1)
			a.Ledger, b.Ledger = &ledA, &ledB
			a.Generation, b.Generation = tc.gen, 7
			shA, _ := NewShares([]int{64, 64}, 0, 128)
			shB, _ := NewShares([]int{64, 64}, 1, 128)
			if _, err := a.StepShare(context.Background(), nil, shA); err != nil {
				t.Fatal(err)
			}
			if _, err := b.StepShare(context.Background(), failingSync{}, shB); err == nil {
				t.Fatal("step with a failing sync succeeded")
			}
			if tc.farAhead { // a goes on without b, in two later generations
				for i := range 20 {
					a.Generation = 8 + int64(i/10)
					if _, err := a.StepShare(context.Background(), nil, shA); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := b.Restore(a.State()); err != nil {
				t.Fatal(err)
			}
			es := ledgerEntries(t, ledB.String())
			if len(es) != 1 || !es[0].Tentative || es[0].Step != 1 || es[0].Gen != 7 || b.Steps() != a.Steps() {
				t.Fatalf("lagging rank at step %d: ledger %s, want only its tentative line of step 1", b.Steps(), ledB.String())
			}
			want := data.NewSampler(mnist(t).Train.N, job.Seed).Next(nil, 128)
			var step1 []int
			for _, e := range ReconcileLedgers([][]LedgerEntry{ledgerEntries(t, ledA.String()), es}) {
				if e.Step == 1 {
					step1 = append(step1, e.Samples...)
				}
			}
			wantStep1 := want[:64] // a's share only
			if tc.counted {
				wantStep1 = want
			}
			if slices.Sort(step1); !slices.Equal(step1, slices.Sorted(slices.Values(wantStep1))) {
				t.Fatalf("reconciled step 1 uses %d samples, want %d", len(step1), len(wantStep1))
			}
		})
	}
}

func ledgerEntries(t *testing.T, ledger string) []LedgerEntry {
	t.Helper()
	var out []LedgerEntry
	for line := range strings.Lines(ledger) {
		var e LedgerEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func TestTrainStateRoundTrip(t *testing.T) {
	s := TrainState{Step: 7, Sampler: data.Position{Epoch: 1, Offset: 99}, OptSteps: 7,
		Scaler: optimizer.ScalerState{Scale: 1024, Good: 3, Skipped: 1}}
	buf := make([]float32, StateWords)
	s.Encode(buf)
	got, err := DecodeState(buf)
	if err != nil || got != s {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, s)
	}
	buf[7] = 0
	if _, err := DecodeState(buf); err == nil {
		t.Fatal("corrupt header accepted")
	}
}
