//go:build amd64 && !purego

package vec

import "golang.org/x/sys/cpu"

var hasAVX2 = cpu.X86.HasAVX2

// sumF32AVX2 sets dst[i] = a[i] + b[i] for i < n, n a multiple of 16.
// dst may be a.
//
//go:noescape
func sumF32AVX2(dst, a, b *float32, n int)

// simdSum does the longest multiple-of-16 prefix and returns its length.
func simdSum(dst, a, b []float32) int {
	n := len(dst) &^ 15
	if !hasAVX2 || n == 0 {
		return 0
	}
	_, _ = a[n-1], b[n-1]
	sumF32AVX2(&dst[0], &a[0], &b[0], n)
	return n
}

// sum2F32AVX2 sets d1[i] = d2[i] = a[i] + b[i] for i < n, n a multiple of 16.
//
//go:noescape
func sum2F32AVX2(d1, d2, a, b *float32, n int)

// copy2AVX2 sets d1[i] = d2[i] = src[i] for i < n, n a multiple of 16.
//
//go:noescape
func copy2AVX2(d1, d2, src *float32, n int)

func simdSum2(d1, d2, a, b []float32) int {
	n := len(d1) &^ 15
	if !hasAVX2 || n == 0 {
		return 0
	}
	_, _, _ = d2[n-1], a[n-1], b[n-1]
	sum2F32AVX2(&d1[0], &d2[0], &a[0], &b[0], n)
	return n
}

func simdCopy2(d1, d2, src []float32) int {
	n := len(d1) &^ 15
	if !hasAVX2 || n == 0 {
		return 0
	}
	_, _ = d2[n-1], src[n-1]
	copy2AVX2(&d1[0], &d2[0], &src[0], n)
	return n
}
