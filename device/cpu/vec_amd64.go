//go:build amd64 && !purego

package cpu

// Elementwise AVX2+FMA loops (vec_amd64.s); see vecKernels.

//go:noescape
func geluAVX2(out, x *float32, n int)

//go:noescape
func geluBwdAVX2(dx, x, dout *float32, n int)

//go:noescape
func expSumAVX2(p *float32, n int, m float32) float32

//go:noescape
func expBwdAVX2(p, q *float32, n int, l, di float32)

//go:noescape
func encodeBF16AVX2(dst *uint16, src *float32, n int)

//go:noescape
func layerNormAVX2(out, x, w, b *float32, n int, eps float32) (mean, rstd float32)

//go:noescape
func layerNormBwdAVX2(dx, dw, db, dout, x, w *float32, n int, mean, rstd float32)

// avx2Vec serves both x86 kernel families: every AVX-512 CPU has AVX2 and
// FMA, and these loops are bound by the exp polynomial's latency chain and
// memory, not by vector width.
var avx2Vec = &vecKernels{
	gelu: geluAVX2, geluBwd: geluBwdAVX2, expSum: expSumAVX2, expBwd: expBwdAVX2, encodeBF16: encodeBF16AVX2,
	layerNorm: layerNormAVX2, layerNormBwd: layerNormBwdAVX2,
}
