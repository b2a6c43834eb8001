package model

import (
	"fmt"
	"math/rand/v2"

	"github.com/loomtrain/loom/device"
)

// MLP is a stack of Linear layers with a fused activation after every layer
// but the last, ending in class logits.
type MLP struct {
	Layers []*Linear
	ctx    *Context
	params []*Param
}

// NewMLP builds widths[0] → … → widths[len-1] with activation act, drawing
// initial weights from a PCG stream seeded by seed (same seed, same model).
func NewMLP(ctx *Context, widths []int, act device.Activation, seed uint64) (*MLP, error) {
	if len(widths) < 2 {
		return nil, fmt.Errorf("mlp needs at least 2 widths, got %v", widths)
	}
	r := rand.New(rand.NewPCG(seed, 0x6d6c70))
	m := &MLP{ctx: ctx}
	for i := 0; i+1 < len(widths); i++ {
		a := act
		if i+2 == len(widths) {
			a = device.None
		}
		l := NewLinear(ctx, fmt.Sprintf("layers.%d", i), widths[i], widths[i+1], a, r)
		l.NoInputGrad = i == 0
		m.Layers = append(m.Layers, l)
		m.params = append(m.params, l.Params()...)
	}
	return m, nil
}

// Forward returns rows×classes logits.
func (m *MLP) Forward(x []float32, rows int) []float32 {
	for _, l := range m.Layers {
		x = l.Forward(x, rows)
	}
	return x
}

// Backward propagates the logits' gradient, accumulating parameter grads
// (or storing them, after SetOverwriteGrads(true)).
// dlogits is modified. If done is non-nil it is called after each layer with
// the parameters whose gradients are now final (last layer first), so a
// data-parallel caller can start summing them while backward continues.
func (m *MLP) Backward(dlogits []float32, rows int, done func([]*Param)) {
	dy := dlogits
	for i := len(m.Layers) - 1; i >= 0; i-- {
		dy = m.Layers[i].Backward(dy, rows)
		if done != nil {
			done(m.Layers[i].Params())
		}
	}
}

// Bind moves every parameter's values and gradients into the flat buffers
// values and grads (at least NumParams long), in Params order, copying the
// current values. Afterwards Param.Value and Param.Grad are views into them,
// which lets a caller all-reduce or checkpoint the whole model as one slice.
func (m *MLP) Bind(values, grads []float32) {
	off := 0
	for _, p := range m.params {
		n := len(p.Value)
		copy(values[off:off+n], p.Value)
		copy(grads[off:off+n], p.Grad)
		p.Value = values[off : off+n : off+n]
		p.Grad = grads[off : off+n : off+n]
		off += n
	}
	m.WeightsChanged()
}

// Params lists all parameters in a stable order (layer by layer, W then b).
func (m *MLP) Params() []*Param { return m.params }

// SetOverwriteGrads makes Backward store parameter gradients (true) rather
// than accumulate them (false, the default); see Linear.OverwriteGrads.
func (m *MLP) SetOverwriteGrads(on bool) {
	for _, l := range m.Layers {
		l.OverwriteGrads = on
	}
}

// ZeroGrad clears every gradient.
func (m *MLP) ZeroGrad() {
	for _, p := range m.params {
		clear(p.Grad)
	}
}

// WeightsChanged tells every layer its master weights were updated.
func (m *MLP) WeightsChanged() {
	for _, l := range m.Layers {
		l.WeightsChanged()
	}
}

// Classes is the width of the logits.
func (m *MLP) Classes() int { return m.Layers[len(m.Layers)-1].Out }

// InDim is the input width.
func (m *MLP) InDim() int { return m.Layers[0].In }

// NumParams counts scalar parameters.
func (m *MLP) NumParams() int {
	n := 0
	for _, p := range m.params {
		n += len(p.Value)
	}
	return n
}
