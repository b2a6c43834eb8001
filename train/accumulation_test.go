package train

import (
	"math"
	"testing"

	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
)

// relDiff is the relative L2 distance of got from want.
func relDiff(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		num += math.Pow(float64(got[i]-want[i]), 2)
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

// gptTrainer builds a 1-thread trainer of a gpt job.
func gptTrainer(t *testing.T, job *jobspec.Job) *Trainer {
	t.Helper()
	split, err := OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := cpu.New(cpu.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(job, dev, split, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Gradient accumulation: a step over train.micro_batches passes (3, which
// does not divide the batch, so the passes are uneven) ends where one pass
// over the whole batch does, to relative 1e-5 after 10 fp32 steps; and it
// keeps the data-parallel contract (3 ranks with micro-batches ≡ 1 worker).
func TestMicroBatchesEquivalence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		job   func() *jobspec.Job
		build func(*jobspec.Job) *Trainer
	}{
		{"mlp", func() *jobspec.Job { return smallJob(t, "fp32", 10) }, func(j *jobspec.Job) *Trainer { return newTrainer(t, j, 1) }},
		{"gpt", func() *jobspec.Job { return gptJob(t, 10) }, func(j *jobspec.Job) *Trainer { return gptTrainer(t, j) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			one, three := tc.job(), tc.job()
			three.Train.MicroBatches = 3
			a, b := tc.build(one), tc.build(three)
			for i := range 10 {
				la, lb := a.Step(), b.Step()
				if math.Abs(la-lb) > 1e-5*math.Abs(la) {
					t.Fatalf("step %d: loss %g with 3 micro-batches, %g with one", i, lb, la)
				}
			}
			if d := relDiff(flatParams(b), flatParams(a)); d > 1e-5 {
				t.Fatalf("3 micro-batches end %g (relative) from one pass", d)
			}
			checkEquivalence(t, three, tc.build)
		})
	}
}

// optimizer.clip_norm bounds the update: with plain SGD one step moves the
// parameters by exactly lr·clip_norm when the gradient's norm is above it,
// and a bound above the norm changes nothing, bitwise.
func TestClipNormBoundsTheStep(t *testing.T) {
	const lr, clip = 0.1, 0.05
	job := func(clipNorm float64) *jobspec.Job {
		j := smallJob(t, "fp32", 1)
		j.Optimizer = jobspec.Optimizer{Kind: "sgd", LR: lr, ClipNorm: clipNorm, Eps: 1e-8}
		j.Schedule = jobspec.Schedule{Kind: "constant"}
		return j
	}
	free, clipped, loose := newTrainer(t, job(0), 1), newTrainer(t, job(clip), 1), newTrainer(t, job(1e6), 1)
	start := flatParams(free)
	for _, tr := range []*Trainer{free, clipped, loose} {
		tr.Step()
	}
	if clipped.lastGradNorm <= clip {
		t.Fatalf("gradient norm %g is not above the bound %g: the test does not clip", clipped.lastGradNorm, clip)
	}
	step := func(tr *Trainer) float64 {
		var s float64
		for i, v := range flatParams(tr) {
			s += math.Pow(float64(v-start[i]), 2)
		}
		return math.Sqrt(s)
	}
	if got := step(clipped); math.Abs(got-lr*clip) > 1e-4*lr*clip {
		t.Fatalf("clipped step moved the parameters by %g, want lr·clip_norm = %g", got, lr*clip)
	}
	if got, want := step(free), lr*clipped.lastGradNorm; math.Abs(got-want) > 1e-4*want {
		t.Fatalf("unclipped step moved the parameters by %g, want lr·norm = %g", got, want)
	}
	want := flatParams(free)
	for i, v := range flatParams(loose) {
		if v != want[i] {
			t.Fatalf("a bound above the norm changed parameter %d", i)
		}
	}
}
