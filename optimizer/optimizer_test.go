package optimizer

import (
	"math"
	"testing"
)

func params(w, g []float32, decay bool) []Param {
	return []Param{{Name: "w", Value: w, Grad: g, Decay: decay}}
}

// AdamW against the textbook update computed in float64.
func TestAdamWMatchesReference(t *testing.T) {
	w := []float32{1, -2, 0.5}
	o, _ := New(Config{Kind: "adamw", WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, params(w, nil, true))
	ref := []float64{1, -2, 0.5}
	m, v := make([]float64, 3), make([]float64, 3)
	const lr, scale = 0.01, 0.5
	for step := 1; step <= 5; step++ {
		g := []float32{float32(step), -1, 0.25 * float32(step)}
		o.Step(params(w, g, true), lr, scale)
		for j := range ref {
			gj := float64(g[j]) * scale
			m[j] = 0.9*m[j] + 0.1*gj
			v[j] = 0.999*v[j] + 0.001*gj*gj
			mh := m[j] / (1 - math.Pow(0.9, float64(step)))
			vh := v[j] / (1 - math.Pow(0.999, float64(step)))
			ref[j] = ref[j]*(1-lr*0.1) - lr*mh/(math.Sqrt(vh)+1e-8)
		}
	}
	for j := range ref {
		if math.Abs(float64(w[j])-ref[j]) > 1e-5 {
			t.Errorf("w[%d] = %g want %g", j, w[j], ref[j])
		}
	}
	if o.Steps() != 5 || len(o.State()) != 2 {
		t.Errorf("steps %d state %d", o.Steps(), len(o.State()))
	}
}

func TestSGDMomentumMatchesReference(t *testing.T) {
	w := []float32{1, 2}
	o, _ := New(Config{Kind: "sgd", Momentum: 0.9, WeightDecay: 0.01}, params(w, nil, false))
	ref := []float64{1, 2}
	buf := make([]float64, 2)
	for step := 0; step < 4; step++ {
		g := []float32{0.5, -1}
		o.Step(params(w, g, false), 0.1, 1)
		for j := range ref {
			if step == 0 {
				buf[j] = float64(g[j])
			} else {
				buf[j] = 0.9*buf[j] + float64(g[j])
			}
			ref[j] -= 0.1 * buf[j]
		}
	}
	for j := range ref {
		if math.Abs(float64(w[j])-ref[j]) > 1e-6 {
			t.Errorf("w[%d] = %g want %g (no decay on Decay=false)", j, w[j], ref[j])
		}
	}
}

func TestAdamWMinimisesQuadratic(t *testing.T) {
	w := []float32{5, -3}
	g := make([]float32, 2)
	o, _ := New(Config{Kind: "adamw", Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, params(w, g, true))
	for i := 0; i < 2000; i++ {
		g[0], g[1] = 2*(w[0]-1), 2*(w[1]+2)
		o.Step(params(w, g, true), 0.05, 1)
	}
	if math.Abs(float64(w[0]-1)) > 1e-2 || math.Abs(float64(w[1]+2)) > 1e-2 {
		t.Fatalf("did not converge: %v", w)
	}
}

func TestScheduleWarmupAndCosine(t *testing.T) {
	s := Schedule{Base: 1, Warmup: 10, Total: 110, Cosine: true, MinRatio: 0.1}
	if s.LR(0) != 0.1 || s.LR(9) != 1 || s.LR(10) != 1 {
		t.Errorf("warmup: %g %g %g", s.LR(0), s.LR(9), s.LR(10))
	}
	if got := s.LR(60); math.Abs(float64(got)-0.55) > 1e-6 {
		t.Errorf("midpoint %g want 0.55", got)
	}
	if got := s.LR(110); math.Abs(float64(got)-0.1) > 1e-6 || s.LR(500) != s.LR(110) {
		t.Errorf("end %g want 0.1", got)
	}
	if (Schedule{Base: 0.3}).LR(1000) != 0.3 {
		t.Error("constant schedule")
	}
}

func TestLossScalerGrowBackoffSkip(t *testing.T) {
	l := &LossScaler{Scale: 1024, GrowthInterval: 3}
	if l.Update(true) || l.Scale != 512 || l.Skipped != 1 {
		t.Fatalf("overflow: apply must be false and scale halve: %+v", l)
	}
	for i := 0; i < 3; i++ {
		if !l.Update(false) {
			t.Fatal("good step skipped")
		}
	}
	if l.Scale != 1024 {
		t.Fatalf("scale did not grow after interval: %g", l.Scale)
	}
	st := l.State()
	var r LossScaler
	r.GrowthInterval = 3
	r.Restore(st)
	if r.State() != st {
		t.Fatal("restore lost state")
	}
	if !AllFinite(params([]float32{1}, []float32{1}, false)) || AllFinite(params([]float32{1}, []float32{float32(math.Inf(1))}, false)) {
		t.Fatal("AllFinite wrong")
	}
}
