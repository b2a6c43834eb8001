package cpu

import (
	"fmt"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// MatMul implements device.Backend on the blocked GEMM of gemm.go, one Gemm
// per batch entry. An F32 operand of a BF16/F16 product is rounded into a
// reused scratch buffer first (the region the entry reads), so the product
// is formed from exactly the rounded values.
func (d *Device) MatMul(g device.GemmSpec) {
	batch := g.Batch
	if batch == 0 {
		batch = 1
	}
	if batch < 0 || g.M < 0 || g.N < 0 || g.K < 0 {
		panic(fmt.Sprintf("cpu device: matmul batch=%d m=%d n=%d k=%d", g.Batch, g.M, g.N, g.K))
	}
	prec := g.Precision
	if prec == 0 {
		prec = g.A.DType()
	}
	switch prec {
	case tensor.F32:
		if g.A.DType() != tensor.F32 || g.B.DType() != tensor.F32 {
			panic(fmt.Sprintf("cpu device: matmul in F32 of %v and %v operands", g.A.DType(), g.B.DType()))
		}
	case tensor.BF16, tensor.F16:
		for _, dt := range []tensor.DType{g.A.DType(), g.B.DType()} {
			if dt != prec && dt != tensor.F32 {
				panic(fmt.Sprintf("cpu device: matmul in %v of a %v operand", prec, dt))
			}
		}
	default:
		panic(fmt.Sprintf("cpu device: matmul precision %v", prec))
	}
	c := d.f32(g.C)
	ar, ac := g.M, g.K
	if g.TransA {
		ar, ac = g.K, g.M
	}
	br, bc := g.K, g.N
	if g.TransB {
		br, bc = g.N, g.K
	}
	for i := 0; i < batch; i++ {
		a := d.operandMatrix(0, g.A, i*g.StrideA, ar, ac, g.LDA, prec)
		b := d.operandMatrix(1, g.B, i*g.StrideB, br, bc, g.LDB, prec)
		off := i * g.StrideC
		if off < 0 || off > len(c) {
			panic(fmt.Sprintf("cpu device: matmul C batch %d at %d of a %d-element view", i, off, len(c)))
		}
		d.Gemm(g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, a, b, g.Beta, c[off:], g.LDC)
	}
}

// operandMatrix wraps the rows×cols operand at element off of v (row stride
// ld) as a Matrix of dtype prec, rounding an F32 view into scratch slot.
func (d *Device) operandMatrix(slot int, v device.View, off, rows, cols, ld int, prec tensor.DType) device.Matrix {
	if off < 0 || off > v.N {
		panic(fmt.Sprintf("cpu device: matmul operand at %d of a %d-element view", off, v.N))
	}
	span := 0
	if rows > 0 && cols > 0 {
		span = (rows-1)*ld + cols
	}
	if span > v.N-off {
		panic(fmt.Sprintf("cpu device: matmul operand %d×%d (ld %d) at %d overruns a %d-element view", rows, cols, ld, off, v.N))
	}
	if v.DType() == tensor.F32 {
		f := d.f32(v)[off:]
		if prec == tensor.F32 {
			return device.F32Matrix(f, ld)
		}
		h := grow(&d.scratch.round[slot], span)
		d.Encode(prec, h, f[:span])
		return device.HalfMatrix(prec, h, ld)
	}
	return device.HalfMatrix(prec, d.u16(v)[off:], ld)
}
