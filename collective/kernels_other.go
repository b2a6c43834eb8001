//go:build !amd64

package collective

// Portable builds have no SIMD fast path: every kernel runs the Go loops.

func simdAddBF16(dst []float32, src []uint16) int { return 0 }
func simdDecodeBF16(dst []float32, src []uint16) int {
	return 0
}
func simdEncodeBF16(dst []uint16, src []float32) int { return 0 }
func simdAddF16(dst []float32, src []uint16) int     { return 0 }
func simdDecodeF16(dst []float32, src []uint16) int  { return 0 }
func simdEncodeF16(dst []uint16, src []float32) int  { return 0 }
