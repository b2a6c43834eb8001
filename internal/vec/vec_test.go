package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Add is bitwise the scalar loop for every length around the vector width
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
		for i := range n {
			want := dst[i] + src[i]
			if math.Float32bits(got[i]) != math.Float32bits(want) && !(want != want && got[i] != got[i]) {
				t.Fatalf("n=%d i=%d: %x want %x", n, i, math.Float32bits(got[i]), math.Float32bits(want))
			}
		}
	}
}
