package cpu

import (
	"runtime"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// TestBackendOpsReuseScratch checks that device.Backend ops allocate no
// buffers in steady state: after a warm-up call, a call may allocate only
// the few small objects of a fork (closures, goroutines), far below the
// size of any operand here.
func TestBackendOpsReuseScratch(t *testing.T) {
	const rows, c = 64, 768
	d, err := New(Config{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	view := func(dt tensor.DType, n int) device.View {
		b, err := d.Alloc(dt, n)
		if err != nil {
			t.Fatal(err)
		}
		return device.Whole(b)
	}
	x, o, g, v := view(tensor.F32, rows*c), view(tensor.F32, rows*c), view(tensor.F32, rows*c), view(tensor.F32, rows*c)
	w, b, dw, db := view(tensor.F32, c), view(tensor.F32, c), view(tensor.F32, c), view(tensor.F32, c)
	m, r := view(tensor.F32, rows), view(tensor.F32, rows)
	ids := view(tensor.I32, rows)
	mat := view(tensor.F32, c*c)
	one := view(tensor.F32, 1)
	d.Fill(r, 1)
	ops := map[string]func(){
		"Add":               func() { d.Add(o, x, g) },
		"BiasGrad":          func() { d.BiasGrad(db, x, rows, c) },
		"Embedding":         func() { d.Embedding(o, mat, ids, rows, c, true) },
		"EmbeddingBackward": func() { d.EmbeddingBackward(mat, x, ids, rows, c) },
		"LayerNorm":         func() { d.LayerNorm(o, m, r, x, w, b, rows, c, 1e-5) },
		"LayerNormBackward": func() { d.LayerNormBackward(o, dw, db, g, x, w, m, r, rows, c) },
		"GELU":              func() { d.GELU(o, x) },
		"CrossEntropy":      func() { d.CrossEntropy(m, o, x, ids, rows, c, 1) },
		"SumSquares":        func() { d.SumSquares(one, x) },
		"AdamW": func() {
			d.AdamWUpdate(x, g, o, v, device.AdamW{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Step: 1, GradScale: 1})
		},
		"MatMul": func() {
			d.MatMul(device.GemmSpec{M: rows, N: c, K: c, Alpha: 1, A: x, B: mat, C: o, LDA: c, LDB: c, LDC: c})
		},
		"MatMulBF16": func() {
			d.MatMul(device.GemmSpec{M: rows, N: c, K: c, Alpha: 1, A: x, B: mat, C: o, LDA: c, LDB: c, LDC: c, Precision: tensor.BF16})
		},
	}
	for name, f := range ops {
		f() // warm-up grows the scratch
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const calls = 10
		for range calls {
			f()
		}
		runtime.ReadMemStats(&after)
		if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > 8<<10 {
			t.Errorf("%s allocates %d bytes per call in steady state", name, per)
		}
	}
}
