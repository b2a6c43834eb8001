package train

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/metrics"
)

// flatParams returns a copy of every parameter value.
func flatParams(tr *Trainer) []float32 { return append([]float32(nil), tr.values...) }

// gptJob is a 2-block byte-level GPT on a text file written for the test
// (context 16, global batch 32 windows).
func gptJob(t testing.TB, steps int) *jobspec.Job {
	t.Helper()
	path := filepath.Join(t.TempDir(), "corpus.txt")
	text := strings.Repeat("the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n", 40)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := jobspec.Parse("gpt.yaml", []byte(`name: gpt-small
seed: 3
model: {kind: gpt, layers: 2, heads: 2, d_model: 32, context: 16, vocab: 256}
data: {dataset: text, path: `+path+`}
train: {epochs: 1, max_steps: `+strconv.Itoa(steps)+`, global_batch: 32, precision: fp32}
optimizer: {kind: adamw, lr: 0.003, weight_decay: 0.01}
schedule: {kind: cosine, warmup_steps: 5}
`))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// The data-parallel contract: 3 ranks with uneven shares of a global batch
// (one half, two quarters), summing gradients over a real TCP ring on
// loopback, end with the parameters of one worker taking the whole batch,
// to relative 1e-5 after 20 fp32 steps: the MLP on MNIST and a GPT on
// text windows.
func TestDataParallelEquivalence(t *testing.T) {
	t.Run("mlp", func(t *testing.T) {
		job := smallJob(t, "fp32", 20)
		job.Train.GlobalBatch = 256
		checkEquivalence(t, job, func(job *jobspec.Job) *Trainer { return newTrainer(t, job, 1) })
	})
	t.Run("gpt", func(t *testing.T) {
		checkEquivalence(t, gptJob(t, 20), func(job *jobspec.Job) *Trainer { return gptTrainer(t, job) })
	})
}

func checkEquivalence(t *testing.T, job *jobspec.Job, newTr func(*jobspec.Job) *Trainer) {
	steps, batch := job.Train.MaxSteps, job.Train.GlobalBatch
	single := newTr(job)
	var singleLoss []float64
	for i := 0; i < steps; i++ {
		singleLoss = append(singleLoss, single.Step())
	}
	want := flatParams(single)
	t.Logf("single worker: loss %.4f → %.4f over %d steps", singleLoss[0], singleLoss[steps-1], steps)
	if !(singleLoss[steps-1] < singleLoss[0]) {
		t.Fatalf("the single worker did not learn: loss %g → %g", singleLoss[0], singleLoss[steps-1])
	}

	shares := []int{batch / 2, batch / 4, batch - batch/2 - batch/4}
	comms := collective.NewTestGroup(t, collective.TransportTCP, 3, collective.DefaultConfig())
	trainers := make([]*Trainer, 3)
	losses := make([][]float64, 3)
	for r := range trainers {
		trainers[r] = newTr(job)
	}
	errs := collective.RunRanks(3, func(r int) error {
		sync := NewRingSync(comms[r])
		defer sync.Close()
		sh, err := NewShares(shares, r, batch)
		if err != nil {
			return err
		}
		for i := 0; i < steps; i++ {
			l, err := trainers[r].StepShare(context.Background(), sync, sh)
			if err != nil {
				return err
			}
			losses[r] = append(losses[r], l)
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r, tr := range trainers {
		got := flatParams(tr)
		var num, den float64
		for i := range want {
			num += math.Pow(float64(got[i]-want[i]), 2)
			den += float64(want[i]) * float64(want[i])
		}
		if rel := math.Sqrt(num / den); rel > 1e-5 {
			t.Errorf("rank %d: parameters differ from the single worker by relative %g", r, rel)
		}
		for i, l := range losses[r] {
			if math.Abs(l-singleLoss[i]) > 1e-5*math.Abs(singleLoss[i]) {
				t.Errorf("rank %d step %d: loss %g, single worker %g", r, i, l, singleLoss[i])
				break
			}
		}
	}
	// Every rank holds bitwise the same parameters (the ring gives all ranks
	// the same sums).
	p0 := flatParams(trainers[0])
	for r := 1; r < 3; r++ {
		for i, v := range flatParams(trainers[r]) {
			if v != p0[i] {
				t.Fatalf("rank %d differs from rank 0 at %d", r, i)
			}
		}
	}
}

func TestSharesSplitShortBatchExactlyOnce(t *testing.T) {
	all := []int{128, 64, 64}
	for _, rows := range []int{256, 96, 1, 0, 255} {
		next := 0
		for r := range all {
			sh, err := NewShares(all, r, 256)
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := sh.Range(rows)
			if lo != next || hi < lo {
				t.Fatalf("rows %d rank %d: range [%d,%d) after %d", rows, r, lo, hi, next)
			}
			next = hi
		}
		if next != rows {
			t.Fatalf("rows %d: ranges cover %d", rows, next)
		}
	}
	if _, err := NewShares([]int{100, 100}, 0, 256); err == nil {
		t.Fatal("shares not summing to the global batch accepted")
	}
}

// BenchmarkDataParallelStep: two ranks in this process (one thread each)
// train the example MLP with SGD at 64 samples per rank, summing gradients
// over a loopback TCP ring: the per-step cost of data parallelism without
// process start-up or the coordinator. metrics=on adds what a worker does
// per step when it serves /metrics and writes metrics.jsonl: its
// Prometheus collectors (all-reduce observer included) and rank 0's
// history line.
func BenchmarkDataParallelStep(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%v", map[bool]string{false: "off", true: "on"}[on]), func(b *testing.B) { benchDataParallel(b, on, collective.TransportTCP) })
	}
	// The ring over mutual TLS, as loom worker runs it with certificates
	// (compare with metrics=off: the same ring over plain TCP).
	b.Run("transport=tls", func(b *testing.B) { benchDataParallel(b, false, collective.TransportTLS) })
}

func benchDataParallel(b *testing.B, withMetrics bool, kind collective.TransportKind) {
	split := mnistForBench(b)
	job, err := jobspec.Parse("bench.yaml", []byte("name: ddp\nmodel: {kind: mlp, layers: [784, 512, 256, 10]}\ntrain: {epochs: 100, global_batch: 128}\noptimizer: {kind: sgd, lr: 0.01}\n"))
	if err != nil {
		b.Fatal(err)
	}
	cfg := collective.DefaultConfig()
	proms := make([]*metrics.Trainer, 2)
	var history *metrics.HistoryWriter
	if withMetrics {
		for r := range proms {
			if proms[r], err = metrics.NewTrainer(prometheus.NewRegistry(), "ddp", fmt.Sprint("w", r)); err != nil {
				b.Fatal(err)
			}
		}
		history = metrics.NewHistoryWriter(metrics.HistoryPath(b.TempDir(), "ddp"), nil)
		defer history.Close()
	}
	comms := make([]*collective.Communicator, 2)
	for r, t := range collective.NewTestTransports(b, kind, cfg.Generation, 2) {
		c := cfg
		c.Rank = r
		if withMetrics {
			c.Observer = proms[r]
		}
		if comms[r], err = collective.New(t, c); err != nil {
			b.Fatal(err)
		}
		defer comms[r].Close()
	}
	trainers := make([]*Trainer, 2)
	for r := range trainers {
		dev, _ := cpu.New(cpu.Config{Threads: 1})
		if trainers[r], err = NewTrainer(job, dev, split, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	errs := collective.RunRanks(2, func(r int) error {
		sync := NewRingSync(comms[r])
		defer sync.Close()
		sh, _ := NewShares([]int{64, 64}, r, 128)
		for i := 0; i < b.N; i++ {
			start := time.Now()
			loss, err := trainers[r].StepShare(context.Background(), sync, sh)
			if err != nil {
				return err
			}
			if withMetrics {
				s := metrics.Step{Step: i + 1, Samples: 64, Batch: 128, TokensPerSample: 1, Loss: loss, LR: 0.01, Took: time.Since(start)}
				proms[r].ObserveStep(s)
				if r == 0 {
					history.Write(metrics.RecordOf(s, time.Now()))
				}
			}
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/step")
	b.ReportMetric(float64(128*b.N)/b.Elapsed().Seconds(), "samples/s")
}
