package collective

import "golang.org/x/sys/cpu"

// AVX2 fast paths of the reduction and bf16 conversion kernels, used when
// the CPU has AVX2; results are bit-identical to the portable loops.

var useAVX2 = cpu.X86.HasAVX2

//go:noescape
func addF32AVX2(dst, src *float32, n int)

//go:noescape
func addBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func decodeBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func encodeBF16AVX2(dst *uint16, src *float32, n int)

// simdAddF32 handles the longest multiple-of-16 prefix and returns how many
// elements it did.
func simdAddF32(dst, src []float32) int {
	n := len(dst) &^ 15
	if !useAVX2 || n == 0 {
		return 0
	}
	_ = src[n-1]
	addF32AVX2(&dst[0], &src[0], n)
	return n
}

func simdAddBF16(dst []float32, src []uint16) int {
	n := len(dst) &^ 15
	if !useAVX2 || n == 0 {
		return 0
	}
	_ = src[n-1]
	addBF16AVX2(&dst[0], &src[0], n)
	return n
}

func simdDecodeBF16(dst []float32, src []uint16) int {
	n := len(src) &^ 15
	if !useAVX2 || n == 0 {
		return 0
	}
	_ = dst[n-1]
	decodeBF16AVX2(&dst[0], &src[0], n)
	return n
}

func simdEncodeBF16(dst []uint16, src []float32) int {
	n := len(src) &^ 15
	if !useAVX2 || n == 0 {
		return 0
	}
	_ = dst[n-1]
	encodeBF16AVX2(&dst[0], &src[0], n)
	return n
}
