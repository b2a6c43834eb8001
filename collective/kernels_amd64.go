package collective

import "golang.org/x/sys/cpu"

// AVX2 fast paths of the reduction and bf16 conversion kernels, and F16C
// paths for fp16, used when the CPU has them; results are bit-identical to
// the portable loops (for fp16 NaNs: those tensor.ToF16 produces).

var (
	useAVX2 = cpu.X86.HasAVX2
	useF16C = cpu.X86.HasAVX && cpu.X86.HasF16C
)

//go:noescape
func addBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func decodeBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func encodeBF16AVX2(dst *uint16, src *float32, n int)

//go:noescape
func encodeF16F16C(dst *uint16, src *float32, n int)

//go:noescape
func decodeF16F16C(dst *float32, src *uint16, n int)

//go:noescape
func addF16F16C(dst *float32, src *uint16, n int)

func simdAddF16(dst []float32, src []uint16) int {
	n := len(dst) &^ 15
	if !useF16C || n == 0 {
		return 0
	}
	_ = src[n-1]
	addF16F16C(&dst[0], &src[0], n)
	return n
}

func simdDecodeF16(dst []float32, src []uint16) int {
	n := len(src) &^ 15
	if !useF16C || n == 0 {
		return 0
	}
	_ = dst[n-1]
	decodeF16F16C(&dst[0], &src[0], n)
	return n
}

func simdEncodeF16(dst []uint16, src []float32) int {
	n := len(src) &^ 15
	if !useF16C || n == 0 {
		return 0
	}
	_ = dst[n-1]
	encodeF16F16C(&dst[0], &src[0], n)
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
