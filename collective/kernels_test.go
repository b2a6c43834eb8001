package collective

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

// randomBits returns n float32 with arbitrary bit patterns (NaN payloads,
// infinities, subnormals, rounding ties) mixed with ordinary values.
func randomBits(rng *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	special := []uint32{0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffbfffff,
		0x00000001, 0x007fffff, 0x3f808000, 0x3f818000, 0x7f7fffff, 0x477ff000}
	for i := range out {
		switch rng.IntN(3) {
		case 0:
			out[i] = math.Float32frombits(rng.Uint32())
		case 1:
			out[i] = math.Float32frombits(special[rng.IntN(len(special))])
		default:
			out[i] = float32(rng.NormFloat64())
		}
	}
	return out
}

func sameBits(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }

// The SIMD kernels must agree bit for bit with the scalar definitions.
func TestKernelsMatchScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 15, 16, 17, 33, 1000, 4096 + 7} {
		src := randomBits(rng, n)
		dst := randomBits(rng, n)

		got := append([]float32(nil), dst...)
		addF32(got, src)
		for i := range n {
			if want := dst[i] + src[i]; !sameBits(got[i], want) && !(want != want && got[i] != got[i]) {
				t.Fatalf("addF32 n=%d i=%d: %x want %x", n, i, math.Float32bits(got[i]), math.Float32bits(want))
			}
		}

		for _, d := range []tensor.DType{tensor.BF16, tensor.F16} {
			enc := make([]uint16, n)
			encodeWire(d, enc, src)
			for i := range n {
				if want := tensor.ToHalf(d, src[i]); enc[i] != want {
					t.Fatalf("encode %s n=%d i=%d (%08x): %04x want %04x", d, n, i, math.Float32bits(src[i]), enc[i], want)
				}
			}
			dec := make([]float32, n)
			decodeWire(d, dec, enc)
			for i := range n {
				if want := tensor.FromHalf(d, enc[i]); !sameBits(dec[i], want) {
					t.Fatalf("decode %s n=%d i=%d (%04x): %08x want %08x", d, n, i, enc[i], math.Float32bits(dec[i]), math.Float32bits(want))
				}
			}
			acc := append([]float32(nil), dst...)
			addWire(d, acc, enc)
			for i := range n {
				want := dst[i] + tensor.FromHalf(d, enc[i])
				if !sameBits(acc[i], want) && !(want != want && acc[i] != acc[i]) {
					t.Fatalf("addWire %s n=%d i=%d", d, n, i)
				}
			}
		}
	}
}

func BenchmarkKernels(b *testing.B) {
	const n = 1 << 16
	src, dst := make([]float32, n), make([]float32, n)
	enc := make([]uint16, n)
	b.Run("addF32", func(b *testing.B) {
		b.SetBytes(n * 4)
		for b.Loop() {
			addF32(dst, src)
		}
	})
	b.Run("encodeBF16", func(b *testing.B) {
		b.SetBytes(n * 4)
		for b.Loop() {
			encodeWire(tensor.BF16, enc, src)
		}
	})
	b.Run("addWireBF16", func(b *testing.B) {
		b.SetBytes(n * 4)
		for b.Loop() {
			addWire(tensor.BF16, dst, enc)
		}
	})
	b.Run("encodeF16", func(b *testing.B) {
		b.SetBytes(n * 4)
		for b.Loop() {
			encodeWire(tensor.F16, enc, src)
		}
	})
	b.Run("addWireF16", func(b *testing.B) {
		b.SetBytes(n * 4)
		for b.Loop() {
			addWire(tensor.F16, dst, enc)
		}
	})
}

// The wavefront enumerates every unit once, index agrees with the
// enumeration, and each unit comes after the unit it depends on.
func TestWavefrontOrder(t *testing.T) {
	for _, s := range []wavefront{{1, 1, 2}, {6, 1, 2}, {6, 32, 2}, {14, 5, 2}, {3, 7, 1}, {4, 3, 100}} {
		seen := map[[2]int]bool{}
		var pos int64
		for w := range s.waves() {
			for tr := s.tmin(w); tr <= s.tmax(w); tr++ {
				k := w - tr*s.lag
				if k < 0 || k >= s.nsub || seen[[2]int{tr, k}] {
					t.Fatalf("%+v: bad or repeated unit (%d,%d)", s, tr, k)
				}
				seen[[2]int{tr, k}] = true
				if got := s.index(tr, k); got != pos {
					t.Fatalf("%+v: index(%d,%d) = %d, enumerated at %d", s, tr, k, got, pos)
				}
				if tr > 0 && s.index(tr-1, k) >= pos {
					t.Fatalf("%+v: unit (%d,%d) before its dependency", s, tr, k)
				}
				pos++
			}
		}
		if len(seen) != s.steps*s.nsub {
			t.Fatalf("%+v: %d units, want %d", s, len(seen), s.steps*s.nsub)
		}
	}
}
