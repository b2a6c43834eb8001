package tensor

import (
	"fmt"
	"strings"
)

// Shape is a list of dimension sizes, outermost first (row-major).
type Shape []int

// Numel is the number of elements; the empty shape is a scalar (1 element).
func (s Shape) Numel() int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Equal reports whether two shapes have the same dimensions.
func (s Shape) Equal(o Shape) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if s[i] != o[i] {
			return false
		}
	}
	return true
}

// String formats the shape as [d0 d1 ...].
func (s Shape) String() string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// Tensor is a dense row-major array. Exactly one of F32 (for DType F32) or
// U16 (for BF16/F16 bit patterns) holds the data. Tensors are plain values:
// they carry no device and no autograd state.
type Tensor struct {
	Shape Shape
	DType DType
	F32   []float32
	U16   []uint16
}

// New allocates a zero tensor of the given dtype and shape.
func New(d DType, shape ...int) *Tensor {
	t := &Tensor{Shape: append(Shape(nil), shape...), DType: d}
	n := t.Shape.Numel()
	if d == F32 {
		t.F32 = make([]float32, n)
	} else {
		t.U16 = make([]uint16, n)
	}
	return t
}

// FromF32 wraps data (not copied) as an F32 tensor of the given shape.
func FromF32(data []float32, shape ...int) *Tensor {
	if Shape(shape).Numel() != len(data) {
		panic(fmt.Sprintf("tensor: %d elements do not fit shape %v", len(data), shape))
	}
	return &Tensor{Shape: append(Shape(nil), shape...), DType: F32, F32: data}
}

// Numel is the number of elements.
func (t *Tensor) Numel() int { return t.Shape.Numel() }

// At returns element i widened to float32, whatever the dtype.
func (t *Tensor) At(i int) float32 {
	if t.DType == F32 {
		return t.F32[i]
	}
	return FromHalf(t.DType, t.U16[i])
}

// Floats returns the values widened to float32 (a copy for 16-bit dtypes,
// the backing slice for F32).
func (t *Tensor) Floats() []float32 {
	if t.DType == F32 {
		return t.F32
	}
	out := make([]float32, len(t.U16))
	DecodeHalf(t.DType, out, t.U16)
	return out
}

// To returns a new tensor holding t converted to dtype d.
func (t *Tensor) To(d DType) *Tensor {
	out := New(d, t.Shape...)
	switch {
	case t.DType == d && d == F32:
		copy(out.F32, t.F32)
	case t.DType == d:
		copy(out.U16, t.U16)
	case d == F32:
		DecodeHalf(t.DType, out.F32, t.U16)
	case t.DType == F32:
		EncodeHalf(d, out.U16, t.F32)
	default:
		for i, h := range t.U16 {
			out.U16[i] = ToHalf(d, FromHalf(t.DType, h))
		}
	}
	return out
}
