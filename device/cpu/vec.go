package cpu

import (
	"math"

	"github.com/loomtrain/loom/tensor"
)

// vecKernels are a kernel family's elementwise loops (vec_amd64.s): each
// takes a length that is a multiple of 8 (16 for encodeBF16), except the
// LayerNorm row kernels, which take any n ≥ 1 and mask their own tail. nil
// in a kernel means the portable loops of elementwise.go, attention.go and
// layerNormRow.
type vecKernels struct {
	gelu         func(out, x *float32, n int)
	geluBwd      func(dx, x, dout *float32, n int) // dx may alias dout
	expSum       func(p *float32, n int, m float32) float32
	expBwd       func(p, g *float32, n int, l, di float32)
	encodeBF16   func(dst *uint16, src *float32, n int)
	layerNorm    func(out, x, w, b *float32, n int, eps float32) (mean, rstd float32)
	layerNormBwd func(dx, dw, db, dout, x, w *float32, n int, mean, rstd float32)
}

// geluInto sets o = gelu(x). With vector kernels a tail shorter than 8 runs
// through them padded, so every element takes the same path wherever a
// thread's range begins: results do not depend on the thread count.
func (k *kernel) geluInto(o, x []float32) {
	o = o[:len(x)]
	v := k.vec
	if v == nil {
		for i, e := range x {
			o[i] = gelu(e)
		}
		return
	}
	n := len(x) &^ 7
	if n > 0 {
		v.gelu(&o[0], &x[0], n)
	}
	if n < len(x) {
		var xb, ob [8]float32
		copy(xb[:], x[n:])
		v.gelu(&ob[0], &xb[0], 8)
		copy(o[n:], ob[:])
	}
}

// geluBackwardInto sets dx = dout·gelu'(x); dx may alias dout.
func (k *kernel) geluBackwardInto(dx, x, dout []float32) {
	dx, dout = dx[:len(x)], dout[:len(x)]
	v := k.vec
	if v == nil {
		for i, e := range x {
			dx[i] = dout[i] * geluGrad(e)
		}
		return
	}
	n := len(x) &^ 7
	if n > 0 {
		v.geluBwd(&dx[0], &x[0], &dout[0], n)
	}
	if n < len(x) {
		var xb, gb [8]float32
		copy(xb[:], x[n:])
		copy(gb[:], dout[n:])
		v.geluBwd(&gb[0], &xb[0], &gb[0], 8)
		copy(dx[n:], gb[:])
	}
}

// expSum sets p[i] = exp(p[i] − m) and returns their sum.
func (k *kernel) expSum(p []float32, m float32) float32 {
	var sum float32
	n := 0
	if v := k.vec; v != nil && len(p) >= 8 {
		n = len(p) &^ 7
		sum = v.expSum(&p[0], n, m)
	}
	for i := n; i < len(p); i++ {
		e := exp32(p[i] - m)
		p[i] = e
		sum += e
	}
	return sum
}

// expBwd sets p[i] = exp(p[i] − l) and g[i] = p[i]·(g[i] − di): the
// attention backward's probabilities and their softmax gradient.
func (k *kernel) expBwd(p, g []float32, l, di float32) {
	g = g[:len(p)]
	n := 0
	if v := k.vec; v != nil && len(p) >= 8 {
		n = len(p) &^ 7
		v.expBwd(&p[0], &g[0], n, l, di)
	}
	for i := n; i < len(p); i++ {
		e := exp32(p[i] - l)
		p[i] = e
		g[i] = e * (g[i] - di)
	}
}

// encodeHalf rounds src into dst (tensor.EncodeHalf, bit for bit).
func (k *kernel) encodeHalf(dt tensor.DType, dst []uint16, src []float32) {
	n := 0
	if v := k.vec; v != nil && dt == tensor.BF16 && len(src) >= 16 {
		n = len(src) &^ 15
		_ = dst[n-1]
		v.encodeBF16(&dst[0], &src[0], n)
	}
	tensor.EncodeHalf(dt, dst[n:len(src)], src[n:])
}

// layerNormRow sets out = (x−μ)·rstd·w + b for one row and returns μ and
// rstd = 1/√(var+eps). The vector kernel sums in float32 lanes (two passes:
// the mean, then the squared deviations); the portable loop sums in
// float64. Either way a row's result depends on that row alone.
func (k *kernel) layerNormRow(out, x, w, b []float32, eps float32) (mean, rstd float32) {
	c := len(x)
	out, w, b = out[:c], w[:c], b[:c]
	if v := k.vec; v != nil && c > 0 {
		return v.layerNorm(&out[0], &x[0], &w[0], &b[0], c, eps)
	}
	var s float64
	for _, e := range x {
		s += float64(e)
	}
	m := s / float64(c)
	var q float64
	for _, e := range x {
		dv := float64(e) - m
		q += dv * dv
	}
	mean, rstd = float32(m), float32(1/math.Sqrt(q/float64(c)+float64(eps)))
	for j, e := range x {
		out[j] = (e-mean)*rstd*w[j] + b[j]
	}
	return mean, rstd
}

// layerNormBackwardRow adds one row's gradients: with x̂ = (x−μ)·rstd and
// ĝ = dout·w, dw += dout·x̂, db += dout and dx += rstd·(ĝ − mean(ĝ) −
// x̂·mean(ĝ·x̂)). The vector kernel sums the means in float32 lanes, the
// portable loop in float64.
func (k *kernel) layerNormBackwardRow(dx, dw, db, dout, x, w []float32, mean, rstd float32) {
	c := len(x)
	dx, dw, db, dout, w = dx[:c], dw[:c], db[:c], dout[:c], w[:c]
	if v := k.vec; v != nil && c > 0 {
		v.layerNormBwd(&dx[0], &dw[0], &db[0], &dout[0], &x[0], &w[0], c, mean, rstd)
		return
	}
	var sg, sgx float64
	for j, e := range x {
		xh := (e - mean) * rstd
		gh := dout[j] * w[j]
		sg += float64(gh)
		sgx += float64(gh * xh)
		dw[j] += dout[j] * xh
		db[j] += dout[j]
	}
	mg, mgx := float32(sg/float64(c)), float32(sgx/float64(c))
	for j, e := range x {
		xh := (e - mean) * rstd
		dx[j] += rstd * (dout[j]*w[j] - mg - xh*mgx)
	}
}
