package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestF16RoundTripAllPatterns(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := FromF16(h)
		got := ToF16(f)
		if math.IsNaN(float64(f)) {
			if got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as non-NaN %#04x", h, got)
			}
			continue
		}
		if got != h {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, got)
		}
	}
}

func TestBF16RoundTripAllPatterns(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := FromBF16(h)
		got := ToBF16(f)
		if math.IsNaN(float64(f)) {
			if !math.IsNaN(float64(FromBF16(got))) {
				t.Fatalf("NaN %#04x came back as %#04x", h, got)
			}
			continue
		}
		if got != h {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, got)
		}
	}
}

// nearest finds the correctly rounded (nearest, ties to even) 16-bit pattern
// for f by brute force over the neighbours of a truncated guess.
func nearest(f float32, from func(uint16) float32) uint16 {
	x := float64(f)
	best := uint16(0)
	bestErr := math.Inf(1)
	for i := 0; i < 1<<16; i++ {
		v := float64(from(uint16(i)))
		if math.IsNaN(v) || math.Signbit(v) != math.Signbit(x) {
			continue
		}
		e := math.Abs(v - x)
		if math.IsInf(v, 0) {
			continue
		}
		if e < bestErr || (e == bestErr && i&1 == 0) {
			best, bestErr = uint16(i), e
		}
	}
	return best
}

func TestRoundingAgainstBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := []float32{0, 1, -1, 3.14159, 1e-8, 6e-8, 5.96e-8, 2.98e-8, 1e-5, 6.1e-5, 65504, 65519, -65519, 3.3895e38, 1.17549435e-38, 1e-40}
	for i := 0; i < 60; i++ {
		cases = append(cases, math.Float32frombits(r.Uint32()&0x7fffffff)*float32(1-2*(i&1)))
		cases = append(cases, float32(r.NormFloat64()*1e-3))
	}
	for _, f := range cases {
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			continue
		}
		if math.Abs(float64(f)) < 65520 {
			if got, want := ToF16(f), nearest(f, FromF16); got != want {
				t.Errorf("ToF16(%g) = %#04x (%g), want %#04x (%g)", f, got, FromF16(got), want, FromF16(want))
			}
		}
		if math.Abs(float64(f)) < 3.3961776e38 {
			if got, want := ToBF16(f), nearest(f, FromBF16); got != want {
				t.Errorf("ToBF16(%g) = %#04x, want %#04x", f, got, want)
			}
		}
	}
}

func TestEdgeCases(t *testing.T) {
	inf := float32(math.Inf(1))
	nan := float32(math.NaN())
	for _, tc := range []struct {
		name string
		got  uint16
		want uint16
	}{
		{"f16 +inf", ToF16(inf), 0x7c00},
		{"f16 -inf", ToF16(-inf), 0xfc00},
		{"f16 overflow", ToF16(70000), 0x7c00},
		{"f16 65520 ties up to inf", ToF16(65520), 0x7c00},
		{"f16 65519 stays finite", ToF16(65519), 0x7bff},
		{"f16 -0", ToF16(float32(math.Copysign(0, -1))), 0x8000},
		{"f16 smallest subnormal", ToF16(5.9604645e-8), 0x0001},
		{"f16 half smallest subnormal ties to 0", ToF16(2.9802322e-8), 0x0000},
		{"f16 just above half smallest", ToF16(math.Nextafter32(2.9802322e-8, 1)), 0x0001},
		{"f16 1.5 ulp subnormal ties to even 2", ToF16(3 * 2.9802322e-8), 0x0002},
		{"f16 largest subnormal", ToF16(6.097555e-5), 0x03ff},
		{"f16 smallest normal", ToF16(6.1035156e-5), 0x0400},
		{"f16 tie 1+2^-11 to even 1", ToF16(1 + 1.0/2048), 0x3c00},
		{"f16 tie 1+3*2^-11 to even up", ToF16(1 + 3.0/2048), 0x3c02},
		{"bf16 tie 1+2^-8 to even 1", ToBF16(1 + 1.0/256), 0x3f80},
		{"bf16 tie 1+3*2^-8 up", ToBF16(1 + 3.0/256), 0x3f82},
		{"bf16 +inf", ToBF16(inf), 0x7f80},
		{"bf16 max float32 rounds to inf", ToBF16(math.MaxFloat32), 0x7f80},
		{"bf16 subnormal kept", ToBF16(math.Float32frombits(0x00010000)), 0x0001},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %#04x want %#04x", tc.name, tc.got, tc.want)
		}
	}
	if !math.IsNaN(float64(FromF16(ToF16(nan)))) || !math.IsNaN(float64(FromBF16(ToBF16(nan)))) {
		t.Error("NaN must stay NaN")
	}
	// A NaN whose payload sits only in the low bits must not become Inf.
	lowNaN := math.Float32frombits(0x7f800001)
	if !math.IsNaN(float64(FromBF16(ToBF16(lowNaN)))) || !math.IsNaN(float64(FromF16(ToF16(lowNaN)))) {
		t.Error("low-payload NaN became Inf")
	}
	if FromF16(0x0001) != 5.9604645e-8 || FromF16(0x7bff) != 65504 || !math.IsInf(float64(FromF16(0xfc00)), -1) {
		t.Error("FromF16 edge values wrong")
	}
}

func TestTensorConvert(t *testing.T) {
	x := FromF32([]float32{1, -2.5, 1e-3, 65504}, 2, 2)
	for _, d := range []DType{BF16, F16} {
		y := x.To(d).To(F32)
		for i, v := range x.F32 {
			if rel := math.Abs(float64(y.F32[i]-v)) / math.Abs(float64(v)); rel > 1.0/128 {
				t.Errorf("%v: %g -> %g", d, v, y.F32[i])
			}
		}
	}
	if !x.Shape.Equal(Shape{2, 2}) || x.Numel() != 4 || x.Shape.String() != "[2 2]" {
		t.Error("shape helpers wrong")
	}
	if d, err := ParseDType("BF16"); err != nil || d != BF16 {
		t.Error("ParseDType bf16")
	}
	if _, err := ParseDType("fp8"); err == nil {
		t.Error("fp8 accepted")
	}
}
