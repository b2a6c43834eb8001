//go:build amd64 && !purego

package vec

import "golang.org/x/sys/cpu"

var hasAVX2 = cpu.X86.HasAVX2

// addF32AVX2 adds src[i] to dst[i] for i < n, n a multiple of 16.
//
//go:noescape
func addF32AVX2(dst, src *float32, n int)

// simdAdd does the longest multiple-of-16 prefix and returns its length.
func simdAdd(dst, src []float32) int {
	n := len(dst) &^ 15
	if !hasAVX2 || n == 0 {
		return 0
	}
	_ = src[n-1]
	addF32AVX2(&dst[0], &src[0], n)
	return n
}
