package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

// vecKernelsUnderTest are this CPU's kernel families that have SIMD
// elementwise loops; the conformance suite covers them through the ops, this
// file at the edges (lengths around 8, extreme inputs, every bit pattern
// class of the bf16 rounding).
func vecKernelsUnderTest(t *testing.T) []*kernel {
	var ks []*kernel
	for _, k := range supportedKernels() {
		if k.vec != nil {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		t.Log("no SIMD elementwise loops on this CPU: the portable loops are the only path")
	}
	return ks
}

func TestVecGELU(t *testing.T) {
	for _, k := range vecKernelsUnderTest(t) {
		for _, n := range []int{1, 7, 8, 9, 23, 4096 + 5} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(-12 + 24*float64(i)/float64(n))
			}
			x[0] = -100
			if n > 1 {
				x[n-1] = 100
			}
			dout := make([]float32, n)
			for i := range dout {
				dout[i] = float32(i%7) - 3
			}
			o, dx := make([]float32, n), make([]float32, n)
			k.geluInto(o, x)
			k.geluBackwardInto(dx, x, dout)
			for i, xv := range x {
				v := float64(xv)
				if want := gelu64(v); math.Abs(float64(o[i])-want) > 1e-6*math.Abs(want)+1e-7 {
					t.Fatalf("%s n=%d: gelu(%g)=%g want %g", k.name, n, v, o[i], want)
				}
				const h = 1e-5
				want := float64(dout[i]) * (gelu64(v+h) - gelu64(v-h)) / (2 * h)
				if math.Abs(float64(dx[i])-want) > 1e-5*(1+math.Abs(want)) {
					t.Fatalf("%s n=%d: dout·gelu'(%g)=%g want %g", k.name, n, v, dx[i], want)
				}
			}
			// In place (dx aliases dout), as GELUBackward allows.
			k.geluBackwardInto(dout, x, dout)
			for i := range dout {
				if dout[i] != dx[i] {
					t.Fatalf("%s n=%d: in-place backward differs at %d", k.name, n, i)
				}
			}
		}
		nan := float32(math.NaN())
		o, dx := make([]float32, 3), make([]float32, 3)
		k.geluInto(o, []float32{nan, 1, nan})
		k.geluBackwardInto(dx, []float32{1, nan, 2}, []float32{1, 1, 1})
		if !isNaN32(o[0]) || !isNaN32(o[2]) || isNaN32(o[1]) || !isNaN32(dx[1]) || isNaN32(dx[0]) {
			t.Fatalf("%s: NaN handling: gelu %v, backward %v", k.name, o, dx)
		}
	}
}

func isNaN32(x float32) bool { return x != x }

func TestVecExp(t *testing.T) {
	for _, k := range vecKernelsUnderTest(t) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, n := range []int{1, 8, 13, 64, 100} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.Float64()*40 - 30)
			}
			m := float32(5)
			p := append([]float32(nil), x...)
			sum := k.expSum(p, m)
			var want float64
			for i, xv := range x {
				e := math.Exp(float64(xv - m)) // the difference rounds to float32 first, as the op does
				want += e
				if math.Abs(float64(p[i])-e) > 3e-7*e {
					t.Fatalf("%s n=%d: exp(%g) = %g want %g", k.name, n, xv-m, p[i], e)
				}
			}
			if math.Abs(float64(sum)-want) > 1e-6*want {
				t.Fatalf("%s n=%d: sum %g want %g", k.name, n, sum, want)
			}
			p = append(p[:0], x...)
			g := make([]float32, n)
			for i := range g {
				g[i] = float32(r.NormFloat64())
			}
			g0 := append([]float32(nil), g...)
			k.expBwd(p, g, m, 0.25)
			for i, xv := range x {
				e := math.Exp(float64(xv - m)) // the difference rounds to float32 first, as the op does
				if w := e * (float64(g0[i]) - 0.25); math.Abs(float64(g[i])-w) > 1e-6*(math.Abs(w)+e) {
					t.Fatalf("%s n=%d: softmax grad %g want %g", k.name, n, g[i], w)
				}
			}
		}
		p := []float32{-200, 200, float32(math.NaN()), 0, 0, 0, 0, 0}
		k.expSum(p, 0)
		if p[0] > 1e-37 || p[1] < 1e38 || !isNaN32(p[2]) || p[3] != 1 {
			t.Fatalf("%s: exp of -200, 200, NaN, 0 = %v", k.name, p[:4])
		}
	}
}

// TestVecEncodeBF16 checks the SIMD rounding bit for bit against
// tensor.ToBF16 on random bit patterns and on every class: ties to even,
// rounding into Inf, subnormals, infinities, signalling and quiet NaNs.
func TestVecEncodeBF16(t *testing.T) {
	for _, k := range vecKernelsUnderTest(t) {
		r := rand.New(rand.NewPCG(3, 4))
		bits := []uint32{0, 0x80000000, 0x00000001, 0x807fffff, 0x3f808000, 0x3f818000, 0x3f80ffff,
			0x7f7fffff, 0xff7f8000, 0x7f800000, 0xff800000, 0x7f800001, 0x7fc00000, 0xffbfffff, 0x7f7f7fff}
		for len(bits) < 4096+3 {
			bits = append(bits, r.Uint32())
		}
		src := make([]float32, len(bits))
		for i, b := range bits {
			src[i] = math.Float32frombits(b)
		}
		dst := make([]uint16, len(src))
		k.encodeHalf(tensor.BF16, dst, src)
		for i, b := range bits {
			if want := tensor.ToBF16(src[i]); dst[i] != want {
				t.Fatalf("%s: bf16(%#08x) = %#04x want %#04x", k.name, b, dst[i], want)
			}
		}
	}
}
