package devicetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// refGemm is C = alpha·op(A)·op(B) + beta·C in float64 over stored arrays.
func refGemm(transA, transB bool, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float64
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += av * bv
			}
			c[i*ldc+j] = alpha*s + beta*c[i*ldc+j]
		}
	}
}

func absAll(x []float64) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = math.Abs(v)
	}
	return y
}

// roundTo returns x rounded to dt (exact for F32).
func roundTo(dt tensor.DType, x []float32) []float64 {
	if dt == tensor.F32 {
		return f64(x)
	}
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(tensor.FromHalf(dt, tensor.ToHalf(dt, v)))
	}
	return y
}

// mmCase is one GemmSpec check: operand views of dtype viewDT, products in
// prec, batch entries at the given strides plus an offset into each view.
type mmCase struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	batch          int
	viewDT, prec   tensor.DType
}

func (c mmCase) String() string {
	return fmt.Sprintf("%v@%v/tA=%v,tB=%v/%dx%dx%d/b%d/α%g,β%g", c.viewDT, c.prec, c.transA, c.transB, c.m, c.n, c.k, c.batch, c.alpha, c.beta)
}

func checkMatMul(t *testing.T, be device.Backend, c mmCase) {
	t.Helper()
	r := rng(uint64(c.m*1009 + c.n*31 + c.k*7 + c.batch))
	ar, ac := c.m, c.k
	if c.transA {
		ar, ac = c.k, c.m
	}
	br, bc := c.k, c.n
	if c.transB {
		br, bc = c.n, c.k
	}
	lda, ldb, ldc := ac+1, bc+3, c.n+2
	batch := max(c.batch, 1)
	span := func(rows, ld, cols int) int { return max(0, (rows-1)*ld+cols) }
	// Strides leave a gap between batch entries; the views start at an
	// offset into their buffers.
	sa, sb, sc := span(ar, lda, ac)+5, span(br, ldb, bc)+2, span(c.m, ldc, c.n)+3
	const off = 3
	a := randn(r, off+batch*sa)
	b := randn(r, off+batch*sb)
	cc := randn(r, off+batch*sc)
	if c.beta == 0 {
		for i := range cc {
			cc[i] = float32(math.NaN()) // must not propagate
		}
	}
	rp := c.prec
	if rp == 0 {
		rp = c.viewDT
	}
	ax, bx := roundTo(rp, a), roundTo(rp, b)
	cx := f64(cc)
	mag := make([]float64, len(cc))
	if c.beta == 0 {
		clear(cx)
	}
	for i := 0; i < batch; i++ {
		refGemm(c.transA, c.transB, c.m, c.n, c.k, float64(c.alpha), ax[off+i*sa:], lda, bx[off+i*sb:], ldb, float64(c.beta), cx[off+i*sc:], ldc)
		refGemm(c.transA, c.transB, c.m, c.n, c.k, math.Abs(float64(c.alpha)), absAll(ax[off+i*sa:]), lda, absAll(bx[off+i*sb:]), ldb, 0, mag[off+i*sc:], ldc)
	}
	av := upload(t, be, c.viewDT, a).Slice(off, len(a))
	bv := upload(t, be, c.viewDT, b).Slice(off, len(b))
	cv := upload(t, be, tensor.F32, cc).Slice(off, len(cc))
	be.MatMul(device.GemmSpec{
		TransA: c.transA, TransB: c.transB, M: c.m, N: c.n, K: c.k, Alpha: c.alpha, Beta: c.beta,
		A: av, B: bv, C: cv, LDA: lda, LDB: ldb, LDC: ldc,
		Batch: c.batch, StrideA: sa, StrideB: sb, StrideC: sc, Precision: c.prec,
	})
	got := download(be, cv)
	for bi := 0; bi < batch; bi++ {
		for i := 0; i < c.m; i++ {
			for j := 0; j < c.n; j++ {
				o := bi*sc + i*ldc + j
				g, w := float64(got[o]), cx[off+o]
				bound := 2e-6*float64(c.k+2)*(mag[off+o]+math.Abs(float64(c.beta))*math.Abs(w)) + 1e-6
				if !(math.Abs(g-w) <= bound) {
					t.Fatalf("%v: C_%d[%d,%d] = %.8g, want %.8g (bound %g)", c, bi, i, j, g, w, bound)
				}
			}
		}
	}
	// Elements outside every product (row padding, gaps) stay untouched.
	inProd := make([]bool, len(got))
	for bi := 0; bi < batch; bi++ {
		for i := 0; i < c.m; i++ {
			for j := 0; j < c.n; j++ {
				inProd[bi*sc+i*ldc+j] = true
			}
		}
	}
	for o, in := range inProd {
		if !in && math.Float32bits(got[o]) != math.Float32bits(cc[off+o]) {
			t.Fatalf("%v: C element %d outside the product changed", c, o)
		}
	}
}

func testMatMul(t *testing.T, be device.Backend) {
	sizes := [][3]int{{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {64, 70, 300}, {5, 130, 257}, {33, 1, 65}, {0, 3, 3}, {3, 3, 0}, {100, 48, 96}}
	for _, s := range sizes {
		for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
			for _, ab := range [][2]float32{{1, 0}, {0.75, 0.5}} {
				checkMatMul(t, be, mmCase{transA: tr[0], transB: tr[1], m: s[0], n: s[1], k: s[2], alpha: ab[0], beta: ab[1], viewDT: tensor.F32})
			}
		}
	}
}

func testMatMulBatched(t *testing.T, be device.Backend) {
	for _, batch := range []int{2, 5} {
		for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
			checkMatMul(t, be, mmCase{transA: tr[0], transB: tr[1], m: 7, n: 19, k: 23, alpha: 1.25, beta: 0, batch: batch, viewDT: tensor.F32})
			checkMatMul(t, be, mmCase{transA: tr[0], transB: tr[1], m: 16, n: 8, k: 64, alpha: 0.5, beta: 1, batch: batch, viewDT: tensor.F32})
		}
	}
}

// testMatMulHalf holds 16-bit products to the reference on rounded
// operands, and checks them against the unrounded product loosely.
func testMatMulHalf(t *testing.T, be device.Backend) {
	for _, prec := range []tensor.DType{tensor.BF16, tensor.F16} {
		for _, s := range [][3]int{{3, 5, 7}, {17, 9, 33}, {64, 70, 300}, {6, 64, 128}} {
			for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
				// F32 views rounded by the backend, and 16-bit views.
				checkMatMul(t, be, mmCase{transA: tr[0], transB: tr[1], m: s[0], n: s[1], k: s[2], alpha: 1, beta: 0.5, viewDT: tensor.F32, prec: prec})
				checkMatMul(t, be, mmCase{transA: tr[0], transB: tr[1], m: s[0], n: s[1], k: s[2], alpha: 1, beta: 0, viewDT: prec, prec: prec, batch: 2})
			}
		}
	}
	// Loose: a bf16 product of F32 data against the exact product.
	r := rng(77)
	m, n, k := 20, 30, 256
	a, b := randn(r, m*k), randn(r, k*n)
	want := make([]float64, m*n)
	refGemm(false, false, m, n, k, 1, f64(a), k, f64(b), n, 0, want, n)
	cv := alloc(t, be, tensor.F32, m*n)
	be.MatMul(device.GemmSpec{M: m, N: n, K: k, Alpha: 1, A: upload(t, be, tensor.F32, a), B: upload(t, be, tensor.F32, b), C: cv, LDA: k, LDB: n, LDC: n, Precision: tensor.BF16})
	// Each product carries ≤ 2⁻⁸ relative error; over k=256 random-sign
	// terms the sum's error is ~√k·2⁻⁸·|a||b|.
	near(t, "bf16 matmul vs exact", download(be, cv), want, 0.2, 0.02)
}
