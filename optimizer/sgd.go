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
			val, grad, buf := p.Value[lo:hi], grad[lo:hi], buf[lo:hi]
			for j, w := range val {
				g := grad[j]*gradScale + wd*w
				if mu != 0 {
					if first {
						buf[j] = g
					} else {
						buf[j] = mu*buf[j] + g
					}
					g = buf[j]
				}
				val[j] = w - lr*g
			}
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
