package cpu

import (
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// operand is op(X) for packing: the stored matrix, whether op transposes it,
// and the true depth k (steps at or past k are packed as zeros).
type operand struct {
	x     device.Matrix
	trans bool
	k     int
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
		widenInto(x, d[:rows], base)
		clear(d[rows:])
	}
}

// packBF32 packs columns [j0, j0+cols) of op(B) over all kpad steps into dst
// in step layout of width nr; columns past cols are zero.
func packBF32(dst []float32, op *operand, j0, cols, kpad, nr int) {
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
			widenInto(x, d[:cols], p*x.LD+j0)
			clear(d[cols:])
		}
		return
	}
	// stored n×k: column j0+s is contiguous in p
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
	for p := 0; p < kv; p++ {
		base := (p0+p)*x.LD + i0
		o := (p>>1)*2*mr + p&1
		for r, v := range x.U16[base : base+rows] {
			dst[o+2*r] = v
		}
	}
}

// packBPair packs columns [j0, j0+cols) of a BF16 op(B) over kpad (even)
// steps into dst in pair layout of width nr.
func packBPair(dst []uint16, op *operand, j0, cols, kpad, nr int) {
	x := op.x
	k := op.k
	dst = dst[:kpad*nr]
	if cols < nr || k < kpad {
		clear(dst)
	}
	if !op.trans {
		for p := 0; p < k; p++ {
			base := p*x.LD + j0
			o := (p>>1)*2*nr + p&1
			for s, v := range x.U16[base : base+cols] {
				dst[o+2*s] = v
			}
		}
		return
	}
	for s := 0; s < cols; s++ {
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
