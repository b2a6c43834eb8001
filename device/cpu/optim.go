package cpu

import (
	"fmt"
	"math"

	"github.com/loomtrain/loom/device"
)

// minOptimElemsPerThread is the parameters per goroutine at least in an
// optimizer update (a sqrt and a divide per element).
const minOptimElemsPerThread = 1 << 13

// AdamWUpdate implements device.Backend. 1−β1, 1−β2 and the bias
// corrections are formed in float64 from the exact hyper-parameters (β2 is
// never rounded to float32 before 1−β2 is taken), then each element is
// updated in float32.
func (d *Device) AdamWUpdate(p, g, m, v device.View, h device.AdamW) {
	checkShape("adamw grad", g, p.N)
	checkShape("adamw m", m, p.N)
	checkShape("adamw v", v, p.N)
	if h.Step < 1 {
		panic(fmt.Sprintf("cpu device: adamw step %d (steps count from 1)", h.Step))
	}
	ps, gs, ms, vs := d.f32(p), d.f32(g), d.f32(m), d.f32(v)
	b1, b2 := float32(h.Beta1), float32(h.Beta2)
	omb1, omb2 := float32(1-h.Beta1), float32(1-h.Beta2)
	inv1 := float32(1 / (1 - math.Pow(h.Beta1, float64(h.Step))))
	inv2 := float32(1 / (1 - math.Pow(h.Beta2, float64(h.Step))))
	lr, eps, wd := float32(h.LR), float32(h.Eps), float32(h.WeightDecay)
	scale := h.GradScale
	d.parallelFor(len(ps), minOptimElemsPerThread, func(lo, hi int) {
		pp, gg, mm, vv := ps[lo:hi], gs[lo:hi], ms[lo:hi], vs[lo:hi]
		for i := range pp {
			gi := scale * gg[i]
			mi := b1*mm[i] + omb1*gi
			vi := b2*vv[i] + omb2*gi*gi
			mm[i], vv[i] = mi, vi
			den := float32(math.Sqrt(float64(vi*inv2))) + eps
			pp[i] -= lr * (mi*inv1/den + wd*pp[i])
		}
	})
}

// SGDUpdate implements device.Backend.
func (d *Device) SGDUpdate(p, g, mom device.View, h device.SGD) {
	checkShape("sgd grad", g, p.N)
	ps, gs := d.f32(p), d.f32(g)
	var ms []float32
	if h.Momentum != 0 {
		if mom.IsZero() {
			panic("cpu device: sgd with momentum needs a momentum view")
		}
		checkShape("sgd momentum", mom, p.N)
		ms = d.f32(mom)
	}
	lr, mu, wd := float32(h.LR), float32(h.Momentum), float32(h.WeightDecay)
	scale := h.GradScale
	d.parallelFor(len(ps), minElemsPerThread, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			gi := scale*gs[i] + wd*ps[i]
			if ms != nil {
				gi = mu*ms[i] + gi
				ms[i] = gi
			}
			ps[i] -= lr * gi
		}
	})
}
