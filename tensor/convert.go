package tensor

import "math"

// FromBF16 widens a bfloat16 bit pattern to float32 exactly.
func FromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// ToBF16 narrows f to bfloat16 with round-to-nearest-even. NaN stays NaN (the
// quiet bit is forced so truncation cannot turn it into Inf).
func ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x0040
	}
	// Add 0x7fff plus the lowest kept bit: ties go to the even neighbour.
	// Overflow of the rounding carries into the exponent, which yields Inf
	// exactly when the value rounds past the largest finite bf16.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// FromF16 widens an IEEE 754 binary16 bit pattern to float32 exactly,
// including subnormals, infinities and NaN payloads.
func FromF16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0: // ±0
		return math.Float32frombits(sign)
	}
	// Subnormal: value = man × 2^-24, exactly representable in float32.
	f := float32(man) * (1.0 / (1 << 24))
	return math.Float32frombits(sign | math.Float32bits(f))
}

// ToF16 narrows f to IEEE 754 binary16 with round-to-nearest-even. Values
// beyond the largest finite half (65504, after rounding) become ±Inf; tiny
// values become subnormals or ±0; NaN stays a quiet NaN.
func ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	abs := b & 0x7fffffff
	switch {
	case abs > 0x7f800000: // NaN: keep the top payload bits, force quiet.
		return sign | 0x7e00 | uint16(abs>>13)&0x3ff
	case abs >= 0x477ff000: // >= 65520 rounds to Inf (and Inf itself)
		return sign | 0x7c00
	case abs >= 0x38800000: // normal half range (>= 2^-14)
		// Rebias exponent from 127 to 15 and round the 13 dropped bits.
		v := abs - (112 << 23)
		v += 0x0fff + (v>>13)&1
		return sign | uint16(v>>13)
	case abs < 0x33000000: // below 2^-25 (half the smallest subnormal): ±0
		return sign
	}
	// Subnormal half: value / 2^-24, rounded to nearest-even integer.
	exp := abs >> 23
	man := abs&0x7fffff | 0x800000 // implicit bit
	shift := 126 - exp             // so that result = man >> shift  (in units of 2^-24)
	half := uint32(1) << (shift - 1)
	rem := man & (1<<shift - 1)
	r := man >> shift
	if rem > half || (rem == half && r&1 == 1) {
		r++
	}
	return sign | uint16(r)
}

// ToHalf narrows f to the 16-bit dtype d (BF16 or F16).
func ToHalf(d DType, f float32) uint16 {
	if d == F16 {
		return ToF16(f)
	}
	return ToBF16(f)
}

// FromHalf widens the 16-bit pattern h of dtype d (BF16 or F16) to float32.
func FromHalf(d DType, h uint16) float32 {
	if d == F16 {
		return FromF16(h)
	}
	return FromBF16(h)
}

// EncodeHalf converts src into dst (len(dst) >= len(src)) in dtype d.
func EncodeHalf(d DType, dst []uint16, src []float32) {
	dst = dst[:len(src)]
	if d == F16 {
		for i, v := range src {
			dst[i] = ToF16(v)
		}
		return
	}
	for i, v := range src {
		dst[i] = ToBF16(v)
	}
}

// DecodeHalf converts src of dtype d into dst (len(dst) >= len(src)).
func DecodeHalf(d DType, dst []float32, src []uint16) {
	dst = dst[:len(src)]
	if d == F16 {
		for i, h := range src {
			dst[i] = FromF16(h)
		}
		return
	}
	for i, h := range src {
		dst[i] = FromBF16(h)
	}
}
