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

// Step implements Optimizer.
func (a *AdamW) Step(params []Param, lr, gradScale float32) {
	a.steps++
	t := float64(a.steps)
	c1 := float32(1 / (1 - math.Pow(a.b1, t)))
	c2 := float32(1 / (1 - math.Pow(a.b2, t)))
	b1, b2 := float32(a.b1), float32(a.b2)
	eps := float32(a.eps)
	for i, p := range params {
		m, v := a.m[i][:len(p.Value)], a.v[i][:len(p.Value)]
		grad := p.Grad[:len(p.Value)]
		decay := float32(1)
		if p.Decay {
			decay = 1 - lr*float32(a.wd)
		}
		chunked(a.threads, len(p.Value), func(lo, hi int) {
			val, grad, m, v := p.Value[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi]
			for j, w := range val {
				g := grad[j] * gradScale
				mj := b1*m[j] + (1-b1)*g
				vj := b2*v[j] + (1-b2)*g*g
				m[j], v[j] = mj, vj
				val[j] = w*decay - lr*(mj*c1)/(float32(math.Sqrt(float64(vj*c2)))+eps)
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
