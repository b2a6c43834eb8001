// Package devicetest is the conformance suite every device.Backend runs:
// each op against a float64 reference written here, each backward pass
// against central finite differences of its forward in float64, and the
// optimizers against float64 implementations. A backend's test calls Run
// with a function that opens a fresh backend.
package devicetest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// runAttention runs the attention cases. attention.go sets it in an init
// func (to attentionCases); until then it does nothing, so the suite builds
// without it.
var runAttention = func(*testing.T, device.Backend) {}

// Run runs the whole suite as subtests of t, each on a backend from open.
func Run(t *testing.T, open func(t *testing.T) device.Backend) {
	cases := []struct {
		name string
		f    func(*testing.T, device.Backend)
	}{
		{"Transfers", testTransfers},
		{"Memory", testMemory},
		{"HostMemory", testHostMemory},
		{"ShapeErrors", testShapeErrors},
		{"Elementwise", testElementwise},
		{"MatMul", testMatMul},
		{"MatMulBatched", testMatMulBatched},
		{"MatMulHalf", testMatMulHalf},
		{"Bias", testBias},
		{"Embedding", testEmbedding},
		{"LayerNorm", testLayerNorm},
		{"GELU", testGELU},
		{"Softmax", testSoftmax},
		{"CrossEntropy", testCrossEntropy},
		{"Reductions", testReductions},
		{"AdamW", testAdamW},
		{"SGD", testSGD},
		{"Attention", func(t *testing.T, be device.Backend) { runAttention(t, be) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := open(t)
			c.f(t, be)
			if err := be.Sync(); err != nil {
				t.Fatalf("Sync: %v", err)
			}
		})
	}
}

// rng returns a deterministic generator for one case.
func rng(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5eed)) }

func randn(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// alloc allocates a buffer freed when t ends.
func alloc(t *testing.T, be device.Backend, dt tensor.DType, n int) device.View {
	t.Helper()
	b, err := be.Alloc(dt, n)
	if err != nil {
		t.Fatalf("Alloc(%v, %d): %v", dt, n, err)
	}
	t.Cleanup(b.Free)
	return device.Whole(b)
}

// upload allocates an F32 (or 16-bit) buffer holding x.
func upload(t *testing.T, be device.Backend, dt tensor.DType, x []float32) device.View {
	t.Helper()
	v := alloc(t, be, dt, len(x))
	be.Upload(v, x)
	return v
}

func uploadI32(t *testing.T, be device.Backend, x []int32) device.View {
	t.Helper()
	v := alloc(t, be, tensor.I32, len(x))
	be.UploadInt32(v, x)
	return v
}

func download(be device.Backend, v device.View) []float32 {
	x := make([]float32, v.N)
	be.Download(x, v)
	return x
}

// near fails t unless |got−want| ≤ atol + rtol·|want| everywhere.
func near(t *testing.T, what string, got []float32, want []float64, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i, w := range want {
		g := float64(got[i])
		if !(math.Abs(g-w) <= atol+rtol*math.Abs(w)) {
			t.Fatalf("%s[%d] = %.9g, want %.9g (atol %g, rtol %g)", what, i, g, w, atol, rtol)
		}
	}
}

// numGrad is the central finite difference of f at x (perturbed in place
// and restored), one coordinate at a time.
func numGrad(f func() float64, x []float64) []float64 {
	const h = 1e-5
	g := make([]float64, len(x))
	for i := range x {
		v := x[i]
		x[i] = v + h
		fp := f()
		x[i] = v - h
		fm := f()
		x[i] = v
		g[i] = (fp - fm) / (2 * h)
	}
	return g
}

// dot is Σ a·b, the scalar loss whose gradient w.r.t. an output is b.
func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func testTransfers(t *testing.T, be device.Backend) {
	r := rng(1)
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I32} {
		v := alloc(t, be, dt, 37)
		if v.DType() != dt || v.Buf.Len() != 37 {
			t.Fatalf("Alloc(%v, 37): dtype %v len %d", dt, v.DType(), v.Buf.Len())
		}
		if dt == tensor.I32 {
			continue
		}
		for i, x := range download(be, v) {
			if x != 0 {
				t.Fatalf("%v buffer not zeroed: [%d] = %v", dt, i, x)
			}
		}
	}
	x := randn(r, 101)
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16} {
		v := alloc(t, be, dt, 120)
		sub := v.Slice(7, 108)
		be.Upload(sub, x)
		got := download(be, sub)
		for i, xv := range x {
			want := xv
			if dt != tensor.F32 {
				want = tensor.FromHalf(dt, tensor.ToHalf(dt, xv))
			}
			if got[i] != want {
				t.Fatalf("%v upload/download [%d] = %v, want %v", dt, i, got[i], want)
			}
		}
		if head := download(be, v.Slice(0, 7)); head[6] != 0 {
			t.Fatalf("%v upload into a slice wrote before it", dt)
		}
		// Copy to F32 and back through every float dtype.
		f := alloc(t, be, tensor.F32, 101)
		be.Copy(f, sub)
		near(t, fmt.Sprintf("copy %v→F32", dt), download(be, f), f64(got), 0, 0)
		for _, dt2 := range []tensor.DType{tensor.BF16, tensor.F16} {
			h := alloc(t, be, dt2, 101)
			be.Copy(h, f)
			g := download(be, h)
			for i, gv := range got {
				if w := tensor.FromHalf(dt2, tensor.ToHalf(dt2, gv)); g[i] != w {
					t.Fatalf("copy %v→%v [%d] = %v, want %v", dt, dt2, i, g[i], w)
				}
			}
		}
	}
	ids := []int32{3, -1, 1 << 30, 0}
	iv := uploadI32(t, be, ids)
	iv2 := alloc(t, be, tensor.I32, 4)
	be.Copy(iv2, iv)
	if hm, ok := be.(device.HostMemory); ok {
		for i, w := range ids {
			if g := hm.HostInt32(iv2)[i]; g != w {
				t.Fatalf("I32 copy [%d] = %d, want %d", i, g, w)
			}
		}
	}
	v := alloc(t, be, tensor.F32, 50)
	be.Fill(v.Slice(10, 40), 2.5)
	for i, g := range download(be, v) {
		want := float32(0)
		if i >= 10 && i < 40 {
			want = 2.5
		}
		if g != want {
			t.Fatalf("fill [%d] = %v, want %v", i, g, want)
		}
	}
}

func testElementwise(t *testing.T, be device.Backend) {
	r := rng(2)
	for _, n := range []int{1, 13, 1000, 100003} {
		a, b := randn(r, n), randn(r, n)
		av, bv := upload(t, be, tensor.F32, a), upload(t, be, tensor.F32, b)
		out := alloc(t, be, tensor.F32, n)
		be.Add(out, av, bv)
		want := make([]float64, n)
		for i := range want {
			want[i] = float64(a[i] + b[i])
		}
		near(t, "add", download(be, out), want, 0, 0)
		be.Add(av, av, bv) // out aliases a
		near(t, "add in place", download(be, av), want, 0, 0)
		be.Scale(bv, -0.75)
		for i := range want {
			want[i] = float64(b[i] * -0.75)
		}
		near(t, "scale", download(be, bv), want, 0, 0)
	}
}

func testMemory(t *testing.T, be device.Backend) {
	used0, limit := be.Memory()
	b, err := be.Alloc(tensor.F32, 1000)
	if err != nil {
		t.Fatal(err)
	}
	h, err := be.Alloc(tensor.BF16, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if used, _ := be.Memory(); used != used0+6000 {
		t.Fatalf("after 1000 F32 + 1000 BF16: used %d, want %d", used, used0+6000)
	}
	b.Free()
	b.Free() // no-op
	if used, _ := be.Memory(); used != used0+2000 {
		t.Fatalf("after Free: used %d, want %d", used, used0+2000)
	}
	h.Free()
	if used, _ := be.Memory(); used != used0 {
		t.Fatalf("after freeing everything: used %d, want %d", used, used0)
	}
	if limit <= 0 {
		t.Log("memory limit unknown: the over-limit Alloc is not checked")
		return
	}
	n := int((limit-used0)/4 + 1<<20)
	big, err := be.Alloc(tensor.F32, n)
	if err == nil {
		big.Free()
		t.Fatalf("Alloc of %d F32 beyond a %d-byte limit succeeded", n, limit)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(n)) {
		t.Errorf("Alloc error %q does not name the requested size %d", err, n)
	}
	if used, _ := be.Memory(); used != used0 {
		t.Fatalf("a failed Alloc changed used to %d (was %d)", used, used0)
	}
}

func testHostMemory(t *testing.T, be device.Backend) {
	hm, ok := be.(device.HostMemory)
	if !ok {
		t.Skip("backend has no host memory")
	}
	v := alloc(t, be, tensor.F32, 10)
	s := hm.HostF32(v.Slice(2, 5))
	if len(s) != 3 {
		t.Fatalf("HostF32 of 3 elements has %d", len(s))
	}
	s[1] = 7
	if g := download(be, v)[3]; g != 7 {
		t.Fatalf("HostF32 does not alias the buffer: element 3 = %v", g)
	}
	iv := alloc(t, be, tensor.I32, 4)
	hm.HostInt32(iv)[2] = 9
	func() {
		defer func() {
			if recover() == nil {
				t.Error("HostF32 of an I32 view did not panic")
			}
		}()
		hm.HostF32(iv)
	}()
}

// testShapeErrors checks that shape errors panic (on the calling
// goroutine), as backend.go requires.
func testShapeErrors(t *testing.T, be device.Backend) {
	a, b := alloc(t, be, tensor.F32, 6), alloc(t, be, tensor.F32, 5)
	panics := func(what string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", what)
			}
		}()
		f()
	}
	panics("Add of 6 and 5 elements", func() { be.Add(a, a, b) })
	panics("Upload of 4 values into 6", func() { be.Upload(a, make([]float32, 4)) })
	panics("Download of 5 elements into 6", func() { be.Download(make([]float32, 6), b) })
	panics("MatMul overrunning C", func() {
		be.MatMul(device.GemmSpec{M: 2, N: 3, K: 1, Alpha: 1, A: a, B: a, C: b, LDA: 1, LDB: 3, LDC: 3})
	})
	panics("View.Slice past the end", func() { a.Slice(2, 7) })
}
