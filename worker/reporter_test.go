package worker

import (
	"math"
	"testing"
	"time"
)

// The speed a worker reports: none until a generation has 3 steps past its
// first, whose (cold) time is left out; then the samples and compute time
// of the window; a new generation starts again.
func TestReporterSpeedWindow(t *testing.T) {
	r := newReporter(&Agent{cfg: AgentConfig{ID: "w", JobID: "j"}}, nil)
	speed := func() (int64, float64) { return r.last.GetSamples(), r.last.GetStepSeconds() }
	nan := math.NaN()
	r.step(1, 1, 0.5, 100, time.Second, nan) // cold: ignored
	for i := 2; i <= 3; i++ {
		r.step(1, i, 0.5, 100, 100*time.Millisecond, nan)
		if n, s := speed(); n != 0 || s != 0 {
			t.Fatalf("step %d: speed reported after %d measured steps: %d samples in %gs", i, i-1, n, s)
		}
	}
	r.step(1, 4, 0.5, 100, 100*time.Millisecond, nan)
	if n, s := speed(); n != 300 || math.Abs(s-0.3) > 1e-9 {
		t.Fatalf("after 3 measured steps: %d samples in %gs, want 300 in 0.3s", n, s)
	}
	r.step(2, 5, 0.5, 50, time.Second, nan) // a new generation: its first step is cold too
	if n, s := speed(); n != 0 || s != 0 {
		t.Fatalf("first step of a new generation reported %d samples in %gs", n, s)
	}
}
