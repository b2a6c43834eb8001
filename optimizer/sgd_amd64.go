//go:build amd64 && !purego

package optimizer

import "golang.org/x/sys/cpu"

// useAVX2 selects the vector SGD kernel. It performs the scalar loop's
// float32 operations in the same order (separate multiplies and adds, no
// fused multiply-add), so the result is bitwise the same.
var useAVX2 = cpu.X86.HasAVX2

// sgdMomentumAVX2 runs, for i in [0, n), n a multiple of 16:
//
//	g := grad[i]*gs + wd*val[i]
//	buf[i] = mu*buf[i] + g
//	val[i] = val[i] - lr*buf[i]
//
//go:noescape
func sgdMomentumAVX2(val, grad, buf *float32, n int, gs, wd, mu, lr float32)

// simdSGDMomentum does the longest multiple-of-16 prefix and returns its length.
func simdSGDMomentum(val, grad, buf []float32, gs, wd, mu, lr float32) int {
	n := len(val) &^ 15
	if !useAVX2 || n == 0 {
		return 0
	}
	_, _ = grad[n-1], buf[n-1]
	sgdMomentumAVX2(&val[0], &grad[0], &buf[0], n, gs, wd, mu, lr)
	return n
}
