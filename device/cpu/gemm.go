package cpu

import (
	"fmt"
	"unsafe"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// GEMM follows the Goto/BLIS scheme. For each block of nc columns, op(B) is
// packed once into nr-wide panels over the whole depth k (shared, read-only,
// ≤ packedBBudget elements so it stays in L3). The m×nc block is then cut
// into tasks (an mc-row block × a range of B panels) handed to threads in
// order; a task walks k in kc slices, packs its mc×kc slice of op(A) into an
// L2-resident buffer of mr-row panels, and for each B micro-panel (kc×nr,
// L1-resident) sweeps the A panels through the mr×nr register kernel.

// packedBBudget bounds the packed op(B) block, in elements (8 MiB of f32);
// Device.bBudget holds it so tests can force several column blocks.
const packedBBudget = 1 << 21

// serialWork is the m·n·k below which a GEMM stays on one thread: forking
// costs a few microseconds, about what 64Ki multiply-adds take.
const serialWork = 1 << 16

// gemmArgs is one Gemm call.
type gemmArgs struct {
	m, n, k     int
	a, b        operand
	alpha, beta float32
	c           []float32
	ldc         int
}

// packFuncs binds the driver to one packed element type: float32 in step
// layout, or bf16 in pair layout (kstep 2).
type packFuncs[T float32 | uint16] struct {
	kstep int
	packA func(dst []T, op *operand, i0, rows, p0, kk, mr int)
	packB func(dst []T, op *operand, j0, cols, kpad, nr int) // cols may span panels
	kern  func(kc int, a, b *T, c *float32, ldc int, alpha, beta float32)
	bufA  func(*workspace) *[]T
	bufB  func(*Device) *[]T
}

// Gemm implements device.Device.
func (d *Device) Gemm(transA, transB bool, m, n, k int, alpha float32, a, b device.Matrix, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkGemm(transA, transB, m, n, k, a, b, c, ldc)
	if k == 0 || alpha == 0 {
		scaleC(c, m, n, ldc, beta)
		return
	}
	g := &gemmArgs{m: m, n: n, k: k, a: operand{x: a, trans: transA, k: k}, b: operand{x: b, trans: transB, k: k, transpose8: d.kern.transpose8}, alpha: alpha, beta: beta, c: c, ldc: ldc}
	d.mu.Lock()
	defer d.mu.Unlock()
	if a.DType == tensor.BF16 && d.kern.bf16 != nil {
		gemmBlocked(d, &packFuncs[uint16]{
			kstep: 2, packA: packAPair, packB: packBPair, kern: d.kern.bf16,
			bufA: func(w *workspace) *[]uint16 { return &w.apH },
			bufB: func(d *Device) *[]uint16 { return &d.bpH },
		}, g)
		return
	}
	gemmBlocked(d, &packFuncs[float32]{
		kstep: 1, packA: packAF32, packB: packBF32, kern: d.kern.f32,
		bufA: func(w *workspace) *[]float32 { return &w.apF },
		bufB: func(d *Device) *[]float32 { return &d.bpF },
	}, g)
}

// gemmBlocked runs the blocked algorithm; the caller holds d.mu.
func gemmBlocked[T float32 | uint16](d *Device, f *packFuncs[T], g *gemmArgs) {
	kn := d.kern
	mr, nr, kc := kn.mr, kn.nr, kn.kc
	m, n := g.m, g.n
	kpad := roundUp(g.k, f.kstep)
	if kpad > kc {
		// Even k slices: 784 as 392+392 rather than 384+384+16, whose thin
		// last slice costs a whole extra pass over C for 2% of the work.
		kc = roundUp(ceilDiv(kpad, ceilDiv(kpad, kc)), 8)
	}
	threads := d.threads
	if m*n*g.k < serialWork {
		threads = 1
	}

	nc := min(roundUp(n, nr), max(nr, d.bBudget/kpad/nr*nr))
	// Row blocks: a multiple of the thread count when there are enough, so
	// the last round of tasks is not one thread working alone.
	nIC := ceilDiv(m, kn.mc)
	if threads > 1 && nIC >= threads {
		nIC = roundUp(nIC, threads)
	}
	mc := roundUp(ceilDiv(m, nIC), mr)
	nIC = ceilDiv(m, mc)
	apLen := mc * kc
	for w := range d.ws[:threads] {
		grow(f.bufA(&d.ws[w]), apLen)
	}

	for jc := 0; jc < n; jc += nc {
		ncur := min(nc, n-jc)
		npan := ceilDiv(ncur, nr)
		bp := grow(f.bufB(d), npan*nr*kpad)
		// Pack in contiguous runs of panels, two per thread.
		perPack := npan
		if threads > 1 {
			perPack = ceilDiv(npan, 2*threads)
		}
		d.parallel(threads, ceilDiv(npan, perPack), func(_, t int) {
			jp0, jp1 := t*perPack, min(npan, (t+1)*perPack)
			j := jc + jp0*nr
			f.packB(bp[jp0*nr*kpad:jp1*nr*kpad], &g.b, j, min(n, jc+jp1*nr)-j, kpad, nr)
		})
		// Fewer row blocks than threads (small m): split the panels too,
		// so every thread has work; each such task packs its own copy of
		// the A slice, so the split is no finer than needed.
		nJ := 1
		if threads > 1 && nIC < threads {
			nJ = min(npan, ceilDiv(threads, nIC))
		}
		per := ceilDiv(npan, nJ)
		nJ = ceilDiv(npan, per)
		d.parallel(threads, nIC*nJ, func(w, t int) {
			ws := &d.ws[w]
			ap := (*f.bufA(ws))[:apLen]
			i0 := (t / nJ) * mc
			rows := min(mc, m-i0)
			npa := ceilDiv(rows, mr)
			jp0 := (t % nJ) * per
			jp1 := min(npan, jp0+per)
			for pc := 0; pc < kpad; pc += kc {
				kk := min(kc, kpad-pc)
				for ip := 0; ip < npa; ip++ {
					f.packA(ap[ip*mr*kk:(ip+1)*mr*kk], &g.a, i0+ip*mr, min(mr, rows-ip*mr), pc, kk, mr)
				}
				beta := g.beta
				if pc > 0 {
					beta = 1
				}
				for jp := jp0; jp < jp1; jp++ {
					j := jc + jp*nr
					cols := min(nr, n-j)
					bpan := bp[jp*nr*kpad+pc*nr : jp*nr*kpad+(pc+kk)*nr]
					if pf := kn.prefetch; pf != nil && jp+1 < jp1 {
						// Fetch the next B micro-panel (in L3) toward L2
						// while this one runs against every A panel.
						next := bp[(jp+1)*nr*kpad+pc*nr:]
						pf((*float32)(unsafe.Pointer(&next[0])), kk*nr*int(unsafe.Sizeof(next[0]))/64)
					}
					for ip := 0; ip < npa; ip++ {
						i := i0 + ip*mr
						apan := ap[ip*mr*kk : (ip+1)*mr*kk]
						if i+mr <= m && cols == nr {
							f.kern(kk/f.kstep, &apan[0], &bpan[0], &g.c[i*g.ldc+j], g.ldc, g.alpha, beta)
							continue
						}
						f.kern(kk/f.kstep, &apan[0], &bpan[0], &ws.tile[0], nr, 1, 0)
						storeTile(g.c[i*g.ldc+j:], g.ldc, ws.tile, nr, min(mr, m-i), cols, g.alpha, beta)
					}
				}
			}
		})
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
func roundUp(a, b int) int { return ceilDiv(a, b) * b }

// grow returns (*p)[:n], reallocating only when the capacity is short, so a
// device's packing buffers are allocated once and reused by later calls.
func grow[T any](p *[]T, n int) []T {
	if cap(*p) < n {
		*p = make([]T, n)
	}
	return (*p)[:n]
}

// scaleC applies C = beta·C, writing zeros when beta == 0.
func scaleC(c []float32, m, n, ldc int, beta float32) {
	if beta == 1 {
		return
	}
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// checkGemm panics with a precise message when operands are too small: a
// shape bug in a model must fail loudly, not read out of bounds silently.
func checkGemm(transA, transB bool, m, n, k int, a, b device.Matrix, c []float32, ldc int) {
	need := func(name string, x device.Matrix, rows, cols int) {
		if x.DType != a.DType {
			panic(fmt.Sprintf("gemm: %s is %v but A is %v", name, x.DType, a.DType))
		}
		l := len(x.F32)
		if x.DType != tensor.F32 {
			l = len(x.U16)
		}
		if x.LD < cols || (rows > 0 && l < (rows-1)*x.LD+cols) {
			panic(fmt.Sprintf("gemm: %s holds %d elements with ld %d, need %d×%d", name, l, x.LD, rows, cols))
		}
	}
	if transA {
		need("A", a, k, m)
	} else {
		need("A", a, m, k)
	}
	if transB {
		need("B", b, n, k)
	} else {
		need("B", b, k, n)
	}
	if ldc < n || len(c) < (m-1)*ldc+n {
		panic(fmt.Sprintf("gemm: C holds %d elements with ldc %d, need %d×%d", len(c), ldc, m, n))
	}
}
