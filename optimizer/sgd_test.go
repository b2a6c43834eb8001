package optimizer

import (
	"math"
	"math/rand/v2"
	"testing"
)

// sgdReference is the scalar update the vector kernel must match bitwise.
func sgdReference(val, grad, buf []float32, gs, wd, mu, lr float32, first bool) {
	for j, w := range val {
		g := grad[j]*gs + wd*w
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
}

func TestSGDUpdateBitwiseMatchesScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 15, 16, 17, 33, 1000, 4099} {
		for _, c := range []struct {
			wd, mu float32
			first  bool
		}{{0, 0.9, false}, {0.01, 0.9, false}, {0, 0.9, true}, {0.1, 0, false}} {
			val, grad, buf := make([]float32, n), make([]float32, n), make([]float32, n)
			for i := range val {
				val[i], grad[i], buf[i] = rng.Float32()*2-1, rng.Float32()*100-50, rng.Float32()-0.5
			}
			if n > 3 {
				grad[1], val[2], buf[3] = float32(math.Copysign(0, -1)), float32(math.Copysign(0, -1)), float32(math.Copysign(0, -1))
			}
			wv, wb := append([]float32(nil), val...), append([]float32(nil), buf...)
			sgdReference(wv, grad, wb, 1.0/64, c.wd, c.mu, 0.01, c.first)
			sgdUpdate(val, grad, buf, 1.0/64, c.wd, c.mu, 0.01, c.first)
			for i := range val {
				if math.Float32bits(val[i]) != math.Float32bits(wv[i]) || math.Float32bits(buf[i]) != math.Float32bits(wb[i]) {
					t.Fatalf("n=%d %+v: element %d: val %g buf %g, scalar %g %g", n, c, i, val[i], buf[i], wv[i], wb[i])
				}
			}
		}
	}
}

// BenchmarkSGDStep: one momentum update of the example MLP's 535k parameters.
func BenchmarkSGDStep(b *testing.B) {
	const n = 784*512 + 512 + 512*256 + 256 + 256*10 + 10
	w, g := make([]float32, n), make([]float32, n)
	for i := range w {
		w[i], g[i] = float32(i%13)*0.01, float32(i%7)*0.1
	}
	o, _ := New(Config{Kind: "sgd", Momentum: 0.9, Threads: 1}, params(w, g, false))
	o.Step(params(w, g, false), 0.01, 1.0/128)
	b.SetBytes(n * 4)
	for b.Loop() {
		o.Step(params(w, g, false), 0.01, 1.0/128)
	}
}
