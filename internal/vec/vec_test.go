package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Add, Sum, Sum2 and Copy2 are bitwise the scalar loop for every length around the vector width
// and for any bit pattern (NaN payloads, infinities, subnormals).
func TestAddMatchesScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	special := []uint32{0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x00000001, 0x007fffff, 0x7f7fffff}
	value := func() float32 {
		switch rng.IntN(3) {
		case 0:
			return math.Float32frombits(rng.Uint32())
		case 1:
			return math.Float32frombits(special[rng.IntN(len(special))])
		}
		return float32(rng.NormFloat64())
	}
	for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 1000, 4096 + 7} {
		dst, src := make([]float32, n), make([]float32, n+3) // src may be longer
		for i := range dst {
			dst[i] = value()
		}
		for i := range src {
			src[i] = value()
		}
		got := append([]float32(nil), dst...)
		Add(got, src)
		sum, s1, s2, c1, c2 := make([]float32, n), append([]float32(nil), dst...), make([]float32, n), make([]float32, n), make([]float32, n)
		Sum(sum, dst, src)
		Sum2(s1, s2, s1, src) // d1 aliasing a, as the collective uses it
		Copy2(c1, c2, src)
		for i := range n {
			if math.Float32bits(c1[i]) != math.Float32bits(src[i]) || math.Float32bits(c2[i]) != math.Float32bits(src[i]) {
				t.Fatalf("Copy2 n=%d i=%d: %x %x want %x", n, i, math.Float32bits(c1[i]), math.Float32bits(c2[i]), math.Float32bits(src[i]))
			}
			want := dst[i] + src[i]
			for name, v := range map[string]float32{"Add": got[i], "Sum": sum[i], "Sum2 d1": s1[i], "Sum2 d2": s2[i]} {
				if math.Float32bits(v) != math.Float32bits(want) && !(want != want && v != v) {
					t.Fatalf("%s n=%d i=%d: %x want %x", name, n, i, math.Float32bits(v), math.Float32bits(want))
				}
			}
		}
	}
}
