package optimizer

// SGD is stochastic gradient descent with (heavy-ball) momentum, with
// PyTorch's semantics: buf = μ·buf + (g + wd·w); w -= lr·buf.
type SGD struct {
	momentum, wd float32
	threads      int
	buf          [][]float32
	names        []string
	steps        int
}

func newSGD(cfg Config, params []Param) *SGD {
	s := &SGD{momentum: float32(cfg.Momentum), wd: float32(cfg.WeightDecay), threads: threadsOf(cfg), buf: stateFor(params)}
	for _, p := range params {
		s.names = append(s.names, p.Name)
	}
	return s
}

// Step implements Optimizer.
func (s *SGD) Step(params []Param, lr, gradScale float32) {
	for i, p := range params {
		buf := s.buf[i][:len(p.Value)]
		grad := p.Grad[:len(p.Value)]
		wd := float32(0)
		if p.Decay {
			wd = s.wd
		}
		first, mu := s.steps == 0, s.momentum
		chunked(s.threads, len(p.Value), func(lo, hi int) {
			sgdUpdate(p.Value[lo:hi], grad[lo:hi], buf[lo:hi], gradScale, wd, mu, lr, first)
		})
	}
	s.steps++
}

// State implements Optimizer.
func (s *SGD) State() []NamedTensor {
	out := make([]NamedTensor, len(s.buf))
	for i, b := range s.buf {
		out[i] = NamedTensor{Name: s.names[i] + ".momentum", Data: b}
	}
	return out
}

// Steps implements Optimizer.
func (s *SGD) Steps() int { return s.steps }

// SetSteps implements Optimizer.
func (s *SGD) SetSteps(n int) { s.steps = n }

// sgdUpdate applies one SGD step to val from grad (times gs), with
// momentum buffer buf (unused when mu is 0; overwritten when first).
func sgdUpdate(val, grad, buf []float32, gs, wd, mu, lr float32, first bool) {
	grad = grad[:len(val)]
	if mu == 0 {
		for j, w := range val {
			g := grad[j]*gs + wd*w
			val[j] = w - lr*g
		}
		return
	}
	buf = buf[:len(val)]
	if first {
		for j, w := range val {
			g := grad[j]*gs + wd*w
			buf[j] = g
			val[j] = w - lr*g
		}
		return
	}
	done := simdSGDMomentum(val, grad, buf, gs, wd, mu, lr)
	val, grad, buf = val[done:], grad[done:], buf[done:]
	for j, w := range val {
		g := grad[j]*gs + wd*w
		b := mu*buf[j] + g
		buf[j] = b
		val[j] = w - lr*b
	}
}
