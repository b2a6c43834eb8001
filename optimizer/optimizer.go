// Package optimizer updates fp32 master weights from gradients: SGD with
// momentum, AdamW with decoupled weight decay, warmup + cosine learning-rate
// schedules, and dynamic loss scaling for fp16.
//
// Gradients reach Step unscaled by the caller's choice of gradScale: the
// trainer passes 1/(global batch × loss scale) so the summed, loss-scaled
// gradients become the mean gradient inside the update, in one pass.
package optimizer

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// Param is one trainable tensor as the optimizer sees it.
type Param struct {
	Name  string
	Value []float32 // fp32 master weights, updated in place
	Grad  []float32 // summed gradient, read only
	Decay bool      // apply weight decay
}

// Optimizer updates parameters in place.
type Optimizer interface {
	// Step applies one update with learning rate lr, reading each gradient
	// multiplied by gradScale.
	Step(params []Param, lr, gradScale float32)
	// State exposes the optimizer's tensors by name (for checkpoints), in a
	// stable order; the slices alias the live state.
	State() []NamedTensor
	// Steps is the number of updates applied so far.
	Steps() int
	// SetSteps restores the update count (AdamW's bias correction depends
	// on it) when state is loaded from a checkpoint or a peer.
	SetSteps(n int)
}

// NamedTensor is one named float32 state tensor.
type NamedTensor struct {
	Name string
	Data []float32
}

// Config selects an optimizer.
type Config struct {
	Kind        string // "sgd" or "adamw"
	WeightDecay float64
	Momentum    float64 // sgd
	Beta1       float64 // adamw
	Beta2       float64 // adamw
	Eps         float64 // adamw
	// Threads splits each update across goroutines; 0 means every core.
	// The result is bitwise the same for any value: elements are independent.
	Threads int
}

// New builds the optimizer for params (state sized to match).
func New(cfg Config, params []Param) (Optimizer, error) {
	switch cfg.Kind {
	case "sgd":
		return newSGD(cfg, params), nil
	case "adamw":
		return newAdamW(cfg, params), nil
	}
	return nil, fmt.Errorf("optimizer %q unknown (want sgd or adamw)", cfg.Kind)
}

// AllFinite reports whether every gradient value is finite. fp16 training
// checks it before stepping and skips the step on overflow.
func AllFinite(params []Param) bool {
	for _, p := range params {
		for _, g := range p.Grad {
			if math.IsInf(float64(g), 0) || math.IsNaN(float64(g)) {
				return false
			}
		}
	}
	return true
}

// GlobalNorm is the L2 norm of every gradient value together (summed in
// float64), the norm that gradient clipping bounds.
func GlobalNorm(params []Param) float64 {
	var s0, s1, s2, s3 float64
	for _, p := range params {
		g := p.Grad
		i := 0
		for ; i+4 <= len(g); i += 4 {
			a, b, c, d := float64(g[i]), float64(g[i+1]), float64(g[i+2]), float64(g[i+3])
			s0 += a * a
			s1 += b * b
			s2 += c * c
			s3 += d * d
		}
		for ; i < len(g); i++ {
			s0 += float64(g[i]) * float64(g[i])
		}
	}
	return math.Sqrt(s0 + s1 + s2 + s3)
}

// ClipCoef is the factor clip_grad_norm_ scales gradients of global norm
// norm by to bound it by maxNorm: maxNorm/(norm+1e-6) when that is below 1,
// else 1 (also for maxNorm 0: no clipping).
func ClipCoef(norm, maxNorm float64) float64 {
	if maxNorm <= 0 {
		return 1
	}
	return min(1, maxNorm/(norm+1e-6))
}

// chunked runs body over [0, n) in contiguous ranges of at least
// minParallel elements on up to threads goroutines, and waits.
func chunked(threads, n int, body func(lo, hi int)) {
	const minParallel = 1 << 15
	w := min(threads, n/minParallel)
	if w <= 1 {
		body(0, n)
		return
	}
	var wg sync.WaitGroup
	per := (n + w - 1) / w
	for lo := 0; lo < n; lo += per {
		hi := min(lo+per, n)
		wg.Go(func() { body(lo, hi) })
	}
	wg.Wait()
}

func threadsOf(c Config) int {
	if c.Threads > 0 {
		return c.Threads
	}
	return runtime.NumCPU()
}

func stateFor(params []Param) [][]float32 {
	s := make([][]float32, len(params))
	for i, p := range params {
		s[i] = make([]float32, len(p.Value))
	}
	return s
}
