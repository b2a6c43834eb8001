// Package vec holds the vector kernels that more than one layer needs (the
// CPU device sums bias gradients with them, the collective sums received
// gradients): each is bitwise the scalar loop it replaces.
package vec

// Add sets dst[i] += src[i] for i < len(dst) (src at least as long): the
// same float32 adds, in the same order per element, as the scalar loop.
func Add(dst, src []float32) {
	src = src[:len(dst)]
	i := simdAdd(dst, src)
	for ; i+8 <= len(dst); i += 8 {
		d, s := dst[i:i+8:i+8], src[i:i+8:i+8]
		d[0] += s[0]
		d[1] += s[1]
		d[2] += s[2]
		d[3] += s[3]
		d[4] += s[4]
		d[5] += s[5]
		d[6] += s[6]
		d[7] += s[7]
	}
	for ; i < len(dst); i++ {
		dst[i] += src[i]
	}
}
