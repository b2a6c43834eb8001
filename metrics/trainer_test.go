package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func newTestTrainer(t *testing.T) (*Trainer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewTrainer(reg, "mnist", "w0")
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// The collectors follow the Prometheus naming conventions (promlint), and
// a second Trainer for the same worker is refused.
func TestTrainerMetricsLint(t *testing.T) {
	m, reg := newTestTrainer(t)
	m.ObserveStep(Step{Step: 1, Samples: 10, Batch: 10, Took: time.Millisecond})
	m.SetPlacement(1, 0, 0, "cpu")
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if _, err := NewTrainer(reg, "mnist", "w0"); err == nil {
		t.Fatal("a duplicate Trainer was registered")
	}
	if _, err := NewTrainer(reg, "mnist", "w1"); err != nil {
		t.Fatalf("a second worker's Trainer: %v", err)
	}
}

// ObserveStep counts steps, samples and tokens, keeps the last loss and
// learning rate, and splits the step's time into phases, idle the rest.
func TestTrainerObserveStep(t *testing.T) {
	m, reg := newTestTrainer(t)
	s := Step{Step: 1, Samples: 32, Batch: 64, TokensPerSample: 128, Loss: 2.5, LR: 0.01, GradNorm: 1.5,
		Took: 100 * time.Millisecond, Compute: 60 * time.Millisecond, Communication: 20 * time.Millisecond, Optimizer: 5 * time.Millisecond}
	m.ObserveStep(s)
	s.Loss, s.GradNorm, s.Evaluated, s.EvalLoss, s.EvalAccuracy = 2.0, 0, true, 2.2, 0.4
	m.ObserveStep(s)
	m.ObserveAllReduce("shm", 1000, time.Millisecond, 0)
	m.ObserveAllReduce("shm", 500, time.Millisecond, 0)
	m.ObserveAllReduce("mem", 7, time.Millisecond, 0)
	m.CheckpointWritten(2*time.Second, 4096)
	m.CheckpointFailed()
	want := map[string]float64{
		"loom_train_steps_total": 2, "loom_train_samples_total": 64, "loom_train_tokens_total": 64 * 128,
		"loom_train_loss": 2.0, "loom_train_learning_rate": 0.01, "loom_train_grad_norm": 1.5,
		"loom_eval_loss": 2.2, "loom_eval_accuracy_ratio": 0.4,
		"loom_checkpoint_size_bytes": 4096, "loom_checkpoint_failures_total": 1,
	}
	for name, v := range want {
		if got := gathered(t, reg, name); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	for phase, v := range map[string]float64{"compute": 0.12, "communication": 0.04, "optimizer": 0.01, "idle": 0.03} {
		if got := testutil.ToFloat64(m.phases[phaseIndex(t, phase)]); !near(got, v) {
			t.Errorf("phase %s = %v s, want %v", phase, got, v)
		}
	}
	if got := testutil.ToFloat64(m.allReduceBytes.WithLabelValues("shm")); got != 1500 {
		t.Errorf("shm all-reduce bytes = %v, want 1500", got)
	}
	if got := testutil.ToFloat64(m.allReduceBytes.WithLabelValues("mem")); got != 7 {
		t.Errorf("mem all-reduce bytes = %v, want 7", got)
	}
	for name, want := range map[string][2]float64{ // count, sum
		"loom_train_step_duration_seconds":       {2, 0.2},
		"loom_checkpoint_write_duration_seconds": {1, 2},
	} {
		h := histogramOf(t, reg, name)
		if float64(h.GetSampleCount()) != want[0] || !near(h.GetSampleSum(), want[1]) {
			t.Errorf("%s: count %d sum %v, want %v", name, h.GetSampleCount(), h.GetSampleSum(), want)
		}
	}
}

// SetPlacement keeps one loom_worker_info series: the old one is deleted
// when the rank changes.
func TestTrainerPlacementMovesInfoSeries(t *testing.T) {
	m, reg := newTestTrainer(t)
	m.SetPlacement(1, 0, 0, "cpu")
	m.SetPlacement(1, 0, 0, "cpu")
	m.SetPlacement(2, 1, 0, "cpu")
	const want = `
# HELP loom_worker_info Always 1: where this process sits in the job's current plan (rank and stage change with the plan generation).
# TYPE loom_worker_info gauge
loom_worker_info{device="cpu",job="mnist",rank="1",stage="0",worker="w0"} 1
# HELP loom_plan_generation Plan generation this process last trained in (0: training alone).
# TYPE loom_plan_generation gauge
loom_plan_generation{job="mnist",worker="w0"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "loom_worker_info", "loom_plan_generation"); err != nil {
		t.Fatal(err)
	}
}

// The per-step and per-all-reduce calls allocate nothing.
func TestTrainerHotPathAllocatesNothing(t *testing.T) {
	m, _ := newTestTrainer(t)
	s := Step{Step: 1, Samples: 32, Batch: 64, Loss: 1, LR: 0.1, Took: 20 * time.Millisecond, Compute: 15 * time.Millisecond}
	if n := testing.AllocsPerRun(100, func() { m.ObserveStep(s) }); n != 0 {
		t.Errorf("ObserveStep: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.ObserveAllReduce("tcp", 1<<20, time.Millisecond, 0) }); n != 0 {
		t.Errorf("ObserveAllReduce: %v allocations", n)
	}
}

// only is the one series of metric name in reg.
func only(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0]
		}
	}
	t.Fatalf("%s: not exactly one series", name)
	return nil
}

func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	m := only(t, reg, name)
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

func histogramOf(t *testing.T, reg *prometheus.Registry, name string) *dto.Histogram {
	return only(t, reg, name).GetHistogram()
}

func phaseIndex(t *testing.T, name string) int {
	for i, n := range phaseNames {
		if n == name {
			return i
		}
	}
	t.Fatalf("no phase %s", name)
	return 0
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// BenchmarkObserveStep is the per-step cost of the collectors (against a
// ~20 ms MNIST step).
func BenchmarkObserveStep(b *testing.B) {
	m, err := NewTrainer(prometheus.NewRegistry(), "mnist", "w0")
	if err != nil {
		b.Fatal(err)
	}
	s := Step{Step: 1, Samples: 128, Batch: 256, Loss: 1, LR: 0.1, Took: 20 * time.Millisecond, Compute: 15 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveStep(s)
		m.ObserveAllReduce("tcp", 1<<20, time.Millisecond, 0)
	}
}
