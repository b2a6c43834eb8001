package devicetest

import (
	"math"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// testAdamW runs 50 AdamW steps at β2 = 0.999 against a float64 AdamW. The
// second moment is held tightly: forming 1−β2 from a float32-rounded β2
// puts a 1.3e-5 relative error into v, which this test catches.
func testAdamW(t *testing.T, be device.Backend) {
	r := rng(10)
	const n = 20011
	h := device.AdamW{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, GradScale: 0.5}
	p := randn(r, n)
	pv, gv := upload(t, be, tensor.F32, p), alloc(t, be, tensor.F32, n)
	mv, vv := alloc(t, be, tensor.F32, n), alloc(t, be, tensor.F32, n)
	p64, m64, v64 := f64(p), make([]float64, n), make([]float64, n)
	for step := 1; step <= 50; step++ {
		g := randn(r, n)
		be.Upload(gv, g)
		h.Step = step
		be.AdamWUpdate(pv, gv, mv, vv, h)
		bc1 := 1 - math.Pow(h.Beta1, float64(step))
		bc2 := 1 - math.Pow(h.Beta2, float64(step))
		for i := range p64 {
			gi := float64(h.GradScale) * float64(g[i])
			m64[i] = h.Beta1*m64[i] + (1-h.Beta1)*gi
			v64[i] = h.Beta2*v64[i] + (1-h.Beta2)*gi*gi
			p64[i] -= h.LR * (m64[i]/bc1/(math.Sqrt(v64[i]/bc2)+h.Eps) + h.WeightDecay*p64[i])
		}
	}
	near(t, "adamw m", download(be, mv), m64, 1e-7, 2e-5)
	near(t, "adamw v", download(be, vv), v64, 1e-12, 4e-6)
	near(t, "adamw p", download(be, pv), p64, 1e-5, 1e-5)
}

func testSGD(t *testing.T, be device.Backend) {
	r := rng(11)
	const n = 5003
	for _, mom := range []float64{0, 0.9} {
		h := device.SGD{LR: 0.05, Momentum: mom, WeightDecay: 0.01, GradScale: 2}
		p := randn(r, n)
		pv, gv := upload(t, be, tensor.F32, p), alloc(t, be, tensor.F32, n)
		var mv device.View
		if mom != 0 {
			mv = alloc(t, be, tensor.F32, n)
		}
		p64, m64 := f64(p), make([]float64, n)
		for step := 0; step < 10; step++ {
			g := randn(r, n)
			be.Upload(gv, g)
			be.SGDUpdate(pv, gv, mv, h)
			for i := range p64 {
				gi := float64(h.GradScale)*float64(g[i]) + h.WeightDecay*p64[i]
				if mom != 0 {
					m64[i] = mom*m64[i] + gi
					gi = m64[i]
				}
				p64[i] -= h.LR * gi
			}
		}
		near(t, "sgd p", download(be, pv), p64, 1e-5, 1e-5)
		if mom != 0 {
			near(t, "sgd momentum", download(be, mv), m64, 1e-5, 1e-5)
		}
	}
}
