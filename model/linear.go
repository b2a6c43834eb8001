package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loomtrain/loom/device"
)

// Linear is y = act(x·Wᵀ + b) with W stored [out, in] (PyTorch layout) and
// the activation fused into the bias pass. Act None gives a plain affine map.
type Linear struct {
	In, Out int
	Act     device.Activation
	W, B    *Param
	// NoInputGrad skips computing dX (for the first layer of a network).
	NoInputGrad bool
	// OverwriteGrads makes Backward store the gradients of W and b instead
	// of adding them to what is there: the caller need not clear them
	// first, and the dW product does not read the old values.
	OverwriteGrads bool

	ctx            *Context
	x              []float32 // input of the last Forward (not owned)
	y, pre, dx     []float32
	xOp, wOp, dyOp operand
	wFresh         bool // wOp holds W in the compute dtype
}

// NewLinear makes a layer with PyTorch's default initialisation:
// W, b ~ U(−1/√in, 1/√in), drawn from r.
func NewLinear(ctx *Context, name string, in, out int, act device.Activation, r *rand.Rand) *Linear {
	l := &Linear{In: in, Out: out, Act: act, ctx: ctx,
		W: newParam(name+".weight", true, out, in),
		B: newParam(name+".bias", false, out)}
	bound := 1 / math.Sqrt(float64(in))
	for i := range l.W.Value {
		l.W.Value[i] = float32((2*r.Float64() - 1) * bound)
	}
	for i := range l.B.Value {
		l.B.Value[i] = float32((2*r.Float64() - 1) * bound)
	}
	return l
}

// Params returns W then b.
func (l *Linear) Params() []*Param { return []*Param{l.W, l.B} }

// OutDim is the output width.
func (l *Linear) OutDim() int { return l.Out }

// WeightsChanged must be called after the optimizer updates W, so the next
// Forward re-rounds W to the compute dtype.
func (l *Linear) WeightsChanged() { l.wFresh = false }

func (l *Linear) weights() device.Matrix {
	if !l.wFresh {
		l.wFresh = true
		return l.wOp.set(l.ctx, l.W.Value, l.In)
	}
	return l.wOp.get(l.ctx, l.W.Value)
}

// Forward implements Layer.
func (l *Linear) Forward(x []float32, rows int) []float32 {
	if len(x) < rows*l.In {
		panic(fmt.Sprintf("%s: input has %d values, want %d×%d", l.W.Name, len(x), rows, l.In))
	}
	l.x = x[:rows*l.In]
	l.y = grow(l.y, rows*l.Out)
	if l.Act != device.None {
		l.pre = grow(l.pre, rows*l.Out)
	}
	d := l.ctx.Dev
	d.Gemm(false, true, rows, l.Out, l.In, 1, l.xOp.set(l.ctx, l.x, l.In), l.weights(), 0, l.y, l.Out)
	d.BiasAct(l.Act, l.y, l.B.Value, l.pre, rows, l.Out)
	return l.y
}

// Backward implements Layer. dy is modified in place (it becomes the
// gradient of the pre-activation).
func (l *Linear) Backward(dy []float32, rows int) []float32 {
	d := l.ctx.Dev
	dy = dy[:rows*l.Out]
	d.ActBackward(l.Act, dy, l.pre)
	beta := float32(1)
	if l.OverwriteGrads {
		beta = 0
		clear(l.B.Grad)
	}
	d.SumRows(l.B.Grad, dy, rows, l.Out)
	dyM := l.dyOp.set(l.ctx, dy, l.Out)
	// dW[out,in] (+)= dyᵀ[out,rows] · x[rows,in]
	d.Gemm(true, false, l.Out, l.In, rows, 1, dyM, l.xOp.get(l.ctx, l.x), beta, l.W.Grad, l.In)
	if l.NoInputGrad {
		return nil
	}
	l.dx = grow(l.dx, rows*l.In)
	// dx[rows,in] = dy[rows,out] · W[out,in]
	d.Gemm(false, false, rows, l.In, l.Out, 1, dyM, l.weights(), 0, l.dx, l.In)
	return l.dx
}
