package model

import "github.com/loomtrain/loom/device"

// Act is a standalone elementwise activation layer (ReLU or GELU). Networks
// normally fuse the activation into Linear; Act exists for architectures
// where an activation does not follow a Linear.
type Act struct {
	Kind device.Activation
	Dim  int

	ctx    *Context
	y, pre []float32
}

// NewAct makes an activation layer over dim-wide rows.
func NewAct(ctx *Context, kind device.Activation, dim int) *Act {
	return &Act{Kind: kind, Dim: dim, ctx: ctx}
}

// Forward implements Layer.
func (a *Act) Forward(x []float32, rows int) []float32 {
	n := rows * a.Dim
	a.y = grow(a.y, n)
	a.pre = grow(a.pre, n)
	copy(a.y, x[:n])
	a.ctx.Dev.BiasAct(a.Kind, a.y, nil, a.pre, rows, a.Dim)
	return a.y
}

// Backward implements Layer (dy is modified in place and returned).
func (a *Act) Backward(dy []float32, rows int) []float32 {
	dy = dy[:rows*a.Dim]
	a.ctx.Dev.ActBackward(a.Kind, dy, a.pre)
	return dy
}

// Params implements Layer: none.
func (a *Act) Params() []*Param { return nil }

// OutDim implements Layer.
func (a *Act) OutDim() int { return a.Dim }
