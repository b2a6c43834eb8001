package cpu

import (
	"math"
	"unsafe"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// operand is op(X) for packing: the stored matrix, whether op transposes it,
// and the true depth k (steps at or past k are packed as zeros).
type operand struct {
	x     device.Matrix
	trans bool
	k     int
	// transpose8 is the kernel's 8×8 block transposer (nil: portable).
	transpose8 func(dst *float32, stride int, src *float32, ld int, blocks int)
}

// Two packed layouts exist.
//
// Step layout (float32 kernels): a panel of w rows (A) or columns (B) holds,
// for each k step p, w consecutive values: element (p, r) is at p·w + r.
//
// Pair layout (bf16 kernels): k steps go in pairs (p0 even); element (p, r)
// is at (p/2)·2w + 2r + p%2, so each row or column contributes one dword per
// pair, low half = even step.

// packAF32 packs rows [i0, i0+rows) × steps [p0, p0+kk) of op(A) into dst in
// step layout of width mr, widening 16-bit values; rows past rows are zero.
func packAF32(dst []float32, op *operand, i0, rows, p0, kk, mr int) {
	x := op.x
	kv := max(0, min(kk, op.k-p0))
	dst = dst[:kk*mr]
	if !op.trans { // stored m×k: row i0+r is contiguous in p
		if mr == 6 && rows == 6 && kv == kk {
			switch x.DType {
			case tensor.F32:
				gather6(dst, x.F32, i0*x.LD+p0, x.LD, kk)
				return
			case tensor.BF16:
				gather6BF16(dst, x.U16, i0*x.LD+p0, x.LD, kk)
				return
			}
		}
		for r := 0; r < mr; r++ {
			if r >= rows {
				for p := 0; p < kk; p++ {
					dst[p*mr+r] = 0
				}
				continue
			}
			base := (i0+r)*x.LD + p0
			switch x.DType {
			case tensor.F32:
				for p, v := range x.F32[base : base+kv] {
					dst[p*mr+r] = v
				}
			case tensor.BF16:
				for p, v := range x.U16[base : base+kv] {
					dst[p*mr+r] = tensor.FromBF16(v)
				}
			default:
				for p, v := range x.U16[base : base+kv] {
					dst[p*mr+r] = tensor.FromF16(v)
				}
			}
			for p := kv; p < kk; p++ {
				dst[p*mr+r] = 0
			}
		}
		return
	}
	// stored k×m: step p0+p is a contiguous run of rows
	for p := 0; p < kk; p++ {
		d := dst[p*mr : (p+1)*mr]
		if p >= kv {
			clear(d)
			continue
		}
		base := (p0+p)*x.LD + i0
		if mr == 6 && rows == 6 && x.DType == tensor.F32 {
			*(*[6]float32)(d) = *(*[6]float32)(x.F32[base:])
			continue
		}
		widenInto(x, d[:rows], base)
		clear(d[rows:])
	}
}

// packBF32 packs columns [j0, j0+cols) of op(B) over all kpad steps into
// ⌈cols/nr⌉ consecutive panels of kpad×nr floats in step layout; columns
// past cols are zero.
func packBF32(dst []float32, op *operand, j0, cols, kpad, nr int) {
	npan := ceilDiv(cols, nr)
	if !op.trans && op.x.DType != tensor.F16 && cols == npan*nr && kpad == op.k {
		// Walk B by blocks of 8 rows across all panels: each source row is
		// read sequentially. Going down one panel's columns instead touches
		// a new cache line and page per row, and costs ~4 ns per element.
		ld := op.x.LD
		for p0 := 0; p0 < kpad; p0 += 8 {
			p1 := min(p0+8, kpad)
			for jp := 0; jp < npan; jp++ {
				pd := dst[jp*nr*kpad : (jp+1)*nr*kpad]
				for p := p0; p < p1; p++ {
					d := pd[p*nr : (p+1)*nr]
					if op.x.DType == tensor.F32 {
						copyPanelRow(d, op.x.F32[p*ld+j0+jp*nr:])
						continue
					}
					for s, v := range op.x.U16[p*ld+j0+jp*nr : p*ld+j0+jp*nr+nr] {
						d[s] = math.Float32frombits(uint32(v) << 16)
					}
				}
			}
		}
		return
	}
	for jp := 0; jp < npan; jp++ {
		packBPanelF32(dst[jp*nr*kpad:(jp+1)*nr*kpad], op, j0+jp*nr, min(nr, cols-jp*nr), kpad, nr)
	}
}

// packBPanelF32 packs one panel: columns [j0, j0+cols), cols ≤ nr.
func packBPanelF32(dst []float32, op *operand, j0, cols, kpad, nr int) {
	x := op.x
	k := op.k
	dst = dst[:kpad*nr]
	if !op.trans { // stored k×n: step p is a contiguous run of columns
		for p := 0; p < kpad; p++ {
			d := dst[p*nr : (p+1)*nr]
			if p >= k {
				clear(d)
				continue
			}
			if cols == nr {
				switch x.DType {
				case tensor.F32:
					copyPanelRow(d, x.F32[p*x.LD+j0:])
					continue
				case tensor.BF16:
					for s, v := range x.U16[p*x.LD+j0 : p*x.LD+j0+nr] {
						d[s] = math.Float32frombits(uint32(v) << 16)
					}
					continue
				}
			}
			widenInto(x, d[:cols], p*x.LD+j0)
			clear(d[cols:])
		}
		return
	}
	// stored n×k: column j0+s is contiguous in p
	if x.DType == tensor.F32 && cols == nr && nr%8 == 0 && kpad == k && op.transpose8 != nil && k >= 8 {
		blocks := k / 8
		for s := 0; s < nr; s += 8 {
			base := (j0 + s) * x.LD
			_ = x.F32[base+7*x.LD+k-1] // the eight rows lie inside x
			op.transpose8(&dst[s], nr, &x.F32[base], x.LD, blocks)
			for p := blocks * 8; p < k; p++ {
				for r := 0; r < 8; r++ {
					dst[p*nr+s+r] = x.F32[base+r*x.LD+p]
				}
			}
		}
		return
	}
	if cols == nr && nr%4 == 0 && kpad == k && x.DType != tensor.F16 {
		for s := 0; s < nr; s += 4 {
			if x.DType == tensor.F32 {
				gather4(dst[s:], nr, x.F32, (j0+s)*x.LD, x.LD, k)
			} else {
				gather4BF16(dst[s:], nr, x.U16, (j0+s)*x.LD, x.LD, k)
			}
		}
		return
	}
	for s := 0; s < nr; s++ {
		if s >= cols {
			for p := 0; p < kpad; p++ {
				dst[p*nr+s] = 0
			}
			continue
		}
		base := (j0 + s) * x.LD
		switch x.DType {
		case tensor.F32:
			for p, v := range x.F32[base : base+k] {
				dst[p*nr+s] = v
			}
		case tensor.BF16:
			for p, v := range x.U16[base : base+k] {
				dst[p*nr+s] = tensor.FromBF16(v)
			}
		default:
			for p, v := range x.U16[base : base+k] {
				dst[p*nr+s] = tensor.FromF16(v)
			}
		}
		for p := k; p < kpad; p++ {
			dst[p*nr+s] = 0
		}
	}
}

// widenInto copies len(d) consecutive elements of x from offset base into d
// as float32.
func widenInto(x device.Matrix, d []float32, base int) {
	switch x.DType {
	case tensor.F32:
		copy(d, x.F32[base:base+len(d)])
	case tensor.BF16:
		for i, v := range x.U16[base : base+len(d)] {
			d[i] = tensor.FromBF16(v)
		}
	default:
		for i, v := range x.U16[base : base+len(d)] {
			d[i] = tensor.FromF16(v)
		}
	}
}

// packAPair packs rows [i0, i0+rows) × steps [p0, p0+kk) of a BF16 op(A)
// (p0 and kk even) into dst in pair layout of width mr.
func packAPair(dst []uint16, op *operand, i0, rows, p0, kk, mr int) {
	x := op.x
	kv := max(0, min(kk, op.k-p0))
	dst = dst[:kk*mr]
	if rows < mr || kv < kk {
		clear(dst)
	}
	if !op.trans {
		if mr == 6 && rows == 6 && kv == kk {
			// Each k pair of a row is one dword: the f32 gather moves them.
			base := i0*x.LD + p0
			if src, ok := asPairs(x.U16[base:base+5*x.LD+kk], x.LD); ok {
				gather6(asPairsDst(dst), src, 0, x.LD/2, kk/2)
				return
			}
		}
		for r := 0; r < rows; r++ {
			base := (i0+r)*x.LD + p0
			src := x.U16[base : base+kv]
			for p := 0; p+1 < len(src); p += 2 {
				o := p*mr + 2*r // (p/2)·2mr + 2r
				dst[o] = src[p]
				dst[o+1] = src[p+1]
			}
			if len(src)%2 == 1 {
				dst[(len(src)-1)*mr+2*r] = src[len(src)-1]
			}
		}
		return
	}
	if mr == 6 && rows == 6 {
		// Two stored rows (steps p, p+1) interleave into one 6-wide pair.
		for p := 0; p+1 < kv; p += 2 {
			base := (p0+p)*x.LD + i0
			a := (*[6]uint16)(x.U16[base:])
			b := (*[6]uint16)(x.U16[base+x.LD:])
			d := (*[12]uint16)(dst[p*6:])
			d[0], d[1], d[2], d[3], d[4], d[5] = a[0], b[0], a[1], b[1], a[2], b[2]
			d[6], d[7], d[8], d[9], d[10], d[11] = a[3], b[3], a[4], b[4], a[5], b[5]
		}
		if kv%2 == 1 {
			base := (p0+kv-1)*x.LD + i0
			for r, v := range x.U16[base : base+6] {
				dst[(kv-1)*6+2*r] = v
			}
		}
		return
	}
	for p := 0; p < kv; p++ {
		base := (p0+p)*x.LD + i0
		o := (p>>1)*2*mr + p&1
		for r, v := range x.U16[base : base+rows] {
			dst[o+2*r] = v
		}
	}
}

// asPairs views a bf16 matrix with an even row stride as uint32 k pairs
// (reinterpreted as float32 bits, which the gathers only move), when its
// first element is dword-aligned.
func asPairs(u []uint16, ld int) ([]float32, bool) {
	if ld%2 != 0 || len(u) < 2 || uintptr(unsafe.Pointer(&u[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&u[0])), len(u)/2), true
}

// asPairsDst views a packed pair-layout buffer (dword-aligned: it comes
// from make) as dwords.
func asPairsDst(u []uint16) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(&u[0])), len(u)/2)
}

// packBPair packs columns [j0, j0+cols) of a BF16 op(B) over kpad (even)
// steps into ⌈cols/nr⌉ consecutive panels in pair layout of width nr.
func packBPair(dst []uint16, op *operand, j0, cols, kpad, nr int) {
	for jp := 0; jp < ceilDiv(cols, nr); jp++ {
		packBPanelPair(dst[jp*nr*kpad:(jp+1)*nr*kpad], op, j0+jp*nr, min(nr, cols-jp*nr), kpad, nr)
	}
}

func packBPanelPair(dst []uint16, op *operand, j0, cols, kpad, nr int) {
	x := op.x
	k := op.k
	dst = dst[:kpad*nr]
	if cols < nr || k < kpad {
		clear(dst)
	}
	if !op.trans {
		p := 0
		if nr == 32 && cols == 32 {
			for ; p+1 < k; p += 2 {
				a := (*[32]uint16)(x.U16[p*x.LD+j0:])
				b := (*[32]uint16)(x.U16[(p+1)*x.LD+j0:])
				d := (*[64]uint16)(dst[p*32:])
				for s := range 32 {
					d[2*s], d[2*s+1] = a[s], b[s]
				}
			}
		}
		for ; p < k; p++ {
			base := p*x.LD + j0
			o := (p>>1)*2*nr + p&1
			for s, v := range x.U16[base : base+cols] {
				dst[o+2*s] = v
			}
		}
		return
	}
	s := 0
	if k%2 == 0 && k > 0 {
		// Four columns at a time, one dword per k pair (see gather4).
		if src, ok := asPairs(x.U16[j0*x.LD:(j0+cols-1)*x.LD+k], x.LD); ok {
			d := asPairsDst(dst)
			for ; s+4 <= cols; s += 4 {
				gather4(d[s:], nr, src, s*x.LD/2, x.LD/2, k/2)
			}
		}
	}
	for ; s < cols; s++ {
		base := (j0 + s) * x.LD
		src := x.U16[base : base+k]
		for p := 0; p+1 < len(src); p += 2 {
			o := p*nr + 2*s
			dst[o] = src[p]
			dst[o+1] = src[p+1]
		}
		if k%2 == 1 {
			dst[(k-1)*nr+2*s] = src[k-1]
		}
	}
}

// gather6 interleaves six rows of src (starting at base, stride ld) over kk
// steps into dst in step layout: the hot case of packing A for the 6-row
// kernels, written so the compiler drops the bounds checks.
func gather6(dst, src []float32, base, ld, kk int) {
	r0 := src[base : base+kk]
	r1 := src[base+ld : base+ld+kk]
	r2 := src[base+2*ld : base+2*ld+kk]
	r3 := src[base+3*ld : base+3*ld+kk]
	r4 := src[base+4*ld : base+4*ld+kk]
	r5 := src[base+5*ld : base+5*ld+kk]
	dst = dst[:6*kk]
	for p := range r0 {
		d := (*[6]float32)(dst[6*p:])
		d[0], d[1], d[2], d[3], d[4], d[5] = r0[p], r1[p], r2[p], r3[p], r4[p], r5[p]
	}
}

// gather4 interleaves four rows of src (from base, stride ld, k long) into
// dst: step p's four values land at dst[p·stride : p·stride+4]. Packing a
// transposed B (the X·Wᵀ of a forward pass) goes four columns at a time so
// each step writes one 16-byte run instead of scattering single floats.
func gather4(dst []float32, stride int, src []float32, base, ld, k int) {
	r0 := src[base : base+k]
	r1 := src[base+ld : base+ld+k]
	r2 := src[base+2*ld : base+2*ld+k]
	r3 := src[base+3*ld : base+3*ld+k]
	for p := range r0 {
		d := (*[4]float32)(dst[p*stride:])
		d[0], d[1], d[2], d[3] = r0[p], r1[p], r2[p], r3[p]
	}
}

// gather4BF16 is gather4 for bf16 sources, widening to float32 (exact).
func gather4BF16(dst []float32, stride int, src []uint16, base, ld, k int) {
	r0 := src[base : base+k]
	r1 := src[base+ld : base+ld+k]
	r2 := src[base+2*ld : base+2*ld+k]
	r3 := src[base+3*ld : base+3*ld+k]
	w := func(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
	for p := range r0 {
		d := (*[4]float32)(dst[p*stride:])
		d[0], d[1], d[2], d[3] = w(r0[p]), w(r1[p]), w(r2[p]), w(r3[p])
	}
}

// gather6BF16 is gather6 for bf16 sources, widening to float32 (exact).
func gather6BF16(dst []float32, src []uint16, base, ld, kk int) {
	r0 := src[base : base+kk]
	r1 := src[base+ld : base+ld+kk]
	r2 := src[base+2*ld : base+2*ld+kk]
	r3 := src[base+3*ld : base+3*ld+kk]
	r4 := src[base+4*ld : base+4*ld+kk]
	r5 := src[base+5*ld : base+5*ld+kk]
	dst = dst[:6*kk]
	w := func(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
	for p := range r0 {
		d := (*[6]float32)(dst[6*p:])
		d[0], d[1], d[2], d[3], d[4], d[5] = w(r0[p]), w(r1[p]), w(r2[p]), w(r3[p]), w(r4[p]), w(r5[p])
	}
}

// copyPanelRow copies len(d) floats from src with fixed-size moves for the
// kernel widths (a memmove call per 64 bytes costs more than the copy).
func copyPanelRow(d, src []float32) {
	switch len(d) {
	case 16:
		*(*[16]float32)(d) = *(*[16]float32)(src)
	case 32:
		*(*[32]float32)(d) = *(*[32]float32)(src)
	default:
		copy(d, src)
	}
}
