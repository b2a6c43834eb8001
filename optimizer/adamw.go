package optimizer

import "math"

// AdamW is Adam with decoupled weight decay (Loshchilov & Hutter):
// w -= lr·wd·w, then the Adam update with bias-corrected moments.
type AdamW struct {
	b1, b2, eps, wd float64
	threads         int
	m, v            [][]float32
	names           []string
	steps           int
}

func newAdamW(cfg Config, params []Param) *AdamW {
	a := &AdamW{b1: cfg.Beta1, b2: cfg.Beta2, eps: cfg.Eps, wd: cfg.WeightDecay, threads: threadsOf(cfg), m: stateFor(params), v: stateFor(params)}
	for _, p := range params {
		a.names = append(a.names, p.Name)
	}
	return a
}

// Step implements Optimizer. It is PyTorch's AdamW (torch.optim.AdamW,
// single-tensor path, fp32 params), in its order of operations:
//
//	p *= 1 − lr·wd                                  (decayed params only)
//	m  = m + (1−β1)·(g − m)                         (exp_avg.lerp_(grad, 1−β1))
//	v  = β2·v + (1−β2)·g·g                          (exp_avg_sq.mul_(β2).addcmul_(g, g, value=1−β2))
//	p -= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)
//
// Every coefficient (1−lr·wd, 1−β1, β2, 1−β2, lr/(1−β1^t),
// sqrt(1−β2^t), eps) is formed in float64 from the exact hyper-parameters
// and rounded to float32 once, as PyTorch does with its Python-float
// scalars; only the per-element arithmetic is float32. (Forming 1−β2 after
// rounding β2 = 0.999 to float32 gives 1−β2 1.3e-5 low, which biased v low
// against PyTorch and every update high by ~6e-6, step after step.) Like
// PyTorch, v is multiplied by float32(β2) = 0.999000013 while the bias
// correction uses the exact β2; that is PyTorch's behaviour, kept on purpose.
// The lerp form assumes 1−β1 < 0.5 (PyTorch switches formula above it; the
// two differ only by rounding).
func (a *AdamW) Step(params []Param, lr, gradScale float32) {
	a.steps++
	t := float64(a.steps)
	stepSize := float32(float64(lr) / (1 - math.Pow(a.b1, t)))
	bc2Sqrt := float32(math.Sqrt(1 - math.Pow(a.b2, t)))
	omb1 := float32(1 - a.b1)
	b2, omb2 := float32(a.b2), float32(1-a.b2)
	eps := float32(a.eps)
	for i, p := range params {
		m, v := a.m[i][:len(p.Value)], a.v[i][:len(p.Value)]
		grad := p.Grad[:len(p.Value)]
		decay := float32(1)
		if p.Decay {
			decay = float32(1 - float64(lr)*a.wd)
		}
		chunked(a.threads, len(p.Value), func(lo, hi int) {
			val, grad, m, v := p.Value[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi]
			for j, w := range val {
				// The float32() conversions pin each rounding: Go may
				// otherwise fuse x*y+z into an FMA on some targets.
				w = float32(w * decay)
				g := float32(grad[j] * gradScale)
				mj := m[j] + float32(omb1*(g-m[j]))
				vj := float32(b2*v[j]) + float32(float32(omb2*g)*g)
				m[j], v[j] = mj, vj
				denom := float32(float32(math.Sqrt(float64(vj)))/bc2Sqrt) + eps
				val[j] = w - float32(float32(stepSize*mj)/denom) // addcdiv_: p + (−step)·m/denom
			}
		})
	}
}

// State implements Optimizer.
func (a *AdamW) State() []NamedTensor {
	out := make([]NamedTensor, 0, 2*len(a.m))
	for i := range a.m {
		out = append(out, NamedTensor{Name: a.names[i] + ".exp_avg", Data: a.m[i]}, NamedTensor{Name: a.names[i] + ".exp_avg_sq", Data: a.v[i]})
	}
	return out
}

// Steps implements Optimizer.
func (a *AdamW) Steps() int { return a.steps }

// SetSteps implements Optimizer.
func (a *AdamW) SetSteps(n int) { a.steps = n }
