// Package vec holds the vector kernels that more than one layer needs (the
// CPU device sums bias gradients with them, the collective sums received
// gradients): each is bitwise the scalar loop it replaces.
package vec

// Add sets dst[i] += src[i] for i < len(dst) (src at least as long): the
// same float32 adds, in the same order per element, as the scalar loop.
func Add(dst, src []float32) { Sum(dst, dst, src) }

// Sum sets dst[i] = a[i] + b[i] for i < len(dst) (a and b at least as
// long), bitwise the scalar loop. dst may be a or b; other overlaps are not
// allowed.
func Sum(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	i := simdSum(dst, a, b)
	for ; i+8 <= len(dst); i += 8 {
		d, x, y := dst[i:i+8:i+8], a[i:i+8:i+8], b[i:i+8:i+8]
		d[0] = x[0] + y[0]
		d[1] = x[1] + y[1]
		d[2] = x[2] + y[2]
		d[3] = x[3] + y[3]
		d[4] = x[4] + y[4]
		d[5] = x[5] + y[5]
		d[6] = x[6] + y[6]
		d[7] = x[7] + y[7]
	}
	for ; i < len(dst); i++ {
		dst[i] = a[i] + b[i]
	}
}

// Sum2 sets d1[i] and d2[i] to a[i] + b[i] for i < len(d1) in one pass over
// the operands (d2, a and b at least as long), bitwise the scalar loop. d1
// may be a or b; d2 must not overlap any of them.
func Sum2(d1, d2, a, b []float32) {
	d2, a, b = d2[:len(d1)], a[:len(d1)], b[:len(d1)]
	for i := simdSum2(d1, d2, a, b); i < len(d1); i++ {
		v := a[i] + b[i]
		d1[i], d2[i] = v, v
	}
}

// Copy2 copies src into both d1 and d2 in one pass (src's bits exactly);
// none of them may overlap.
func Copy2(d1, d2, src []float32) {
	d2, src = d2[:len(d1)], src[:len(d1)]
	i := simdCopy2(d1, d2, src)
	copy(d1[i:], src[i:])
	copy(d2[i:], src[i:])
}
