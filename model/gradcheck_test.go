package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/tensor"
)

func testCtx(t *testing.T, dt tensor.DType) *Context {
	t.Helper()
	d, err := cpu.New(cpu.Config{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	return &Context{Dev: d, DType: dt}
}

func randn(r *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * scale)
	}
	return x
}

// checkGrad compares analytic gradients with central finite differences of
// loss() with respect to each value in vals (perturbed in place).
func checkGrad(t *testing.T, name string, loss func() float64, vals, grads []float32) {
	t.Helper()
	const eps = 1e-2
	for i := range vals {
		orig := vals[i]
		vals[i] = orig + eps
		up := loss()
		vals[i] = orig - eps
		down := loss()
		vals[i] = orig
		num := (up - down) / (2 * eps)
		if diff := math.Abs(num - float64(grads[i])); diff > 2e-2*math.Max(1, math.Abs(num)) {
			t.Errorf("%s[%d]: analytic %g, numeric %g", name, i, grads[i], num)
		}
	}
}

func TestLinearGradients(t *testing.T) {
	for _, act := range []device.Activation{device.None, device.ReLU, device.GELU} {
		t.Run(act.String(), func(t *testing.T) {
			ctx := testCtx(t, tensor.F32)
			r := rand.New(rand.NewPCG(1, uint64(act)))
			const rows, in, out = 5, 7, 4
			l := NewLinear(ctx, "l", in, out, act, r)
			x := randn(r, rows*in, 1)
			proj := randn(r, rows*out, 1)
			loss := func() float64 {
				y := l.Forward(x, rows)
				var s float64
				for i, v := range y {
					s += float64(v) * float64(proj[i])
				}
				return s
			}
			loss()
			dy := append([]float32(nil), proj...)
			dx := append([]float32(nil), l.Backward(dy, rows)...)
			checkGrad(t, "W", loss, l.W.Value, l.W.Grad)
			checkGrad(t, "b", loss, l.B.Value, l.B.Grad)
			checkGrad(t, "x", loss, x, dx)
		})
	}
}

func TestActGradients(t *testing.T) {
	for _, act := range []device.Activation{device.ReLU, device.GELU} {
		ctx := testCtx(t, tensor.F32)
		r := rand.New(rand.NewPCG(2, uint64(act)))
		const rows, dim = 3, 6
		a := NewAct(ctx, act, dim)
		x := randn(r, rows*dim, 1)
		for i, v := range x { // keep ReLU away from its kink
			if math.Abs(float64(v)) < 0.05 {
				x[i] = 0.3
			}
		}
		proj := randn(r, rows*dim, 1)
		loss := func() float64 {
			var s float64
			for i, v := range a.Forward(x, rows) {
				s += float64(v) * float64(proj[i])
			}
			return s
		}
		loss()
		dx := append([]float32(nil), a.Backward(append([]float32(nil), proj...), rows)...)
		checkGrad(t, act.String(), loss, x, dx)
	}
}

func TestSoftmaxCEGradientAndLoss(t *testing.T) {
	ctx := testCtx(t, tensor.F32)
	r := rand.New(rand.NewPCG(3, 3))
	const rows, classes = 4, 5
	logits := randn(r, rows*classes, 2)
	labels := []int32{0, 4, 2, 2}
	ce := NewSoftmaxCE(ctx)
	loss := func() float64 {
		l, _, _ := ce.Forward(logits, labels, rows, classes, 1)
		return l
	}
	_, _, g := ce.Forward(logits, labels, rows, classes, 1)
	checkGrad(t, "logits", loss, logits, append([]float32(nil), g...))
	// Uniform logits: loss is log(classes) per row.
	l, _, _ := ce.Forward(make([]float32, rows*classes), labels, rows, classes, 1)
	if math.Abs(l-rows*math.Log(classes)) > 1e-9 {
		t.Errorf("uniform loss %g want %g", l, rows*math.Log(classes))
	}
}

func TestMLPGradientsEndToEnd(t *testing.T) {
	ctx := testCtx(t, tensor.F32)
	m, err := NewMLP(ctx, []int{6, 8, 5, 3}, device.GELU, 9)
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[0].NoInputGrad = false
	r := rand.New(rand.NewPCG(4, 4))
	const rows = 4
	x := randn(r, rows*6, 1)
	labels := []int32{0, 1, 2, 1}
	ce := NewSoftmaxCE(ctx)
	loss := func() float64 {
		l, _, _ := ce.Forward(m.Forward(x, rows), labels, rows, 3, 1)
		return l
	}
	_, _, g := ce.Forward(m.Forward(x, rows), labels, rows, 3, 1)
	m.ZeroGrad()
	m.Backward(g, rows, nil)
	for _, p := range m.Params() {
		checkGrad(t, p.Name, loss, p.Value, append([]float32(nil), p.Grad...))
	}
}

// A 16-bit compute dtype must give nearly the fp32 gradients: operands are
// rounded but accumulation is fp32.
func TestMixedPrecisionCloseToFP32(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	const rows = 8
	x := randn(r, rows*16, 1)
	labels := []int32{0, 1, 2, 3, 0, 1, 2, 3}
	grads := map[tensor.DType][]float32{}
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16} {
		ctx := testCtx(t, dt)
		m, _ := NewMLP(ctx, []int{16, 32, 4}, device.ReLU, 1)
		_, _, g := NewSoftmaxCE(ctx).Forward(m.Forward(x, rows), labels, rows, 4, 1)
		m.Backward(g, rows, nil)
		grads[dt] = append([]float32(nil), m.Params()[0].Grad...)
	}
	for _, dt := range []tensor.DType{tensor.BF16, tensor.F16} {
		var num, den float64
		for i, v := range grads[tensor.F32] {
			num += math.Pow(float64(grads[dt][i]-v), 2)
			den += float64(v) * float64(v)
		}
		if rel := math.Sqrt(num / den); rel > 0.02 || rel == 0 {
			t.Errorf("%v gradient relative error %g (want (0, 0.02])", dt, rel)
		}
	}
}

// With OverwriteGrads, Backward stores the gradients whatever the buffers
// held: the same as clearing them and accumulating once.
func TestOverwriteGradsStores(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	const rows = 5
	x := randn(r, rows*16, 1)
	labels := []int32{0, 1, 2, 3, 0}
	ctx := testCtx(t, tensor.F32)
	m, _ := NewMLP(ctx, []int{16, 32, 4}, device.ReLU, 1)
	ce := NewSoftmaxCE(ctx)
	backward := func() {
		_, _, g := ce.Forward(m.Forward(x, rows), labels, rows, 4, 1)
		m.Backward(g, rows, nil)
	}
	m.ZeroGrad()
	backward()
	var want [][]float32
	for _, p := range m.Params() {
		want = append(want, append([]float32(nil), p.Grad...))
		for i := range p.Grad {
			p.Grad[i] = 7 // stale values must not leak through
		}
	}
	m.SetOverwriteGrads(true)
	backward()
	for i, p := range m.Params() {
		for j, v := range p.Grad {
			if v != want[i][j] {
				t.Fatalf("%s[%d] = %g, want %g", p.Name, j, v, want[i][j])
			}
		}
	}
}
