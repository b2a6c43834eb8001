// Package model holds loom's layers with explicit forward and backward passes
// and the networks built from them (an MLP from a job config).
//
// Contracts: forward buffers are owned by the layer and reused across steps
// (valid until the next call); Backward accumulates into each Param's Grad,
// so the caller zeroes gradients once per step. Master values are float32;
// with a 16-bit compute dtype, GEMM operands are rounded to that dtype and
// accumulated in float32.
package model

import (
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// Param is one trainable tensor: fp32 master values and their gradient.
type Param struct {
	Name  string
	Shape tensor.Shape
	Value []float32
	Grad  []float32
	// Decay reports whether weight decay applies (weights yes, biases no).
	Decay bool
}

func newParam(name string, decay bool, shape ...int) *Param {
	n := tensor.Shape(shape).Numel()
	return &Param{Name: name, Shape: shape, Value: make([]float32, n), Grad: make([]float32, n), Decay: decay}
}

// Layer is one differentiable stage of a network.
type Layer interface {
	// Forward maps rows×in inputs to rows×out outputs.
	Forward(x []float32, rows int) []float32
	// Backward takes the gradient of the outputs of the last Forward and
	// returns the gradient of its inputs (nil when the layer was told its
	// input needs none). Parameter gradients are accumulated.
	Backward(dy []float32, rows int) []float32
	Params() []*Param
	OutDim() int
}

// Context is what layers compute with.
type Context struct {
	Dev device.Device
	// DType is the GEMM operand precision: F32, BF16 or F16.
	DType tensor.DType
}

// grow returns buf resized to n elements, reusing its storage when it can.
func grow(buf []float32, n int) []float32 {
	if cap(buf) >= n {
		return buf[:n]
	}
	return make([]float32, n)
}

func growU16(buf []uint16, n int) []uint16 {
	if cap(buf) >= n {
		return buf[:n]
	}
	return make([]uint16, n)
}

// operand is a GEMM input in the compute dtype. For 16-bit dtypes it keeps
// the rounded copy in a reused buffer so a backward pass can use it again.
type operand struct {
	half []uint16
	ld   int
}

// set rounds x to the compute dtype (a no-op view for F32).
func (o *operand) set(ctx *Context, x []float32, ld int) device.Matrix {
	o.ld = ld
	if ctx.DType == tensor.F32 {
		return device.F32Matrix(x, ld)
	}
	o.half = growU16(o.half, len(x))
	ctx.Dev.Encode(ctx.DType, o.half, x)
	return device.HalfMatrix(ctx.DType, o.half, ld)
}

// get returns the operand last set from x.
func (o *operand) get(ctx *Context, x []float32) device.Matrix {
	if ctx.DType == tensor.F32 {
		return device.F32Matrix(x, o.ld)
	}
	return device.HalfMatrix(ctx.DType, o.half, o.ld)
}
