package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// uploadF32 allocates an F32 buffer on d holding x and returns its view.
func uploadF32(tb testing.TB, d *Device, x []float32) device.View {
	buf, err := d.Alloc(tensor.F32, len(x))
	if err != nil {
		tb.Fatal(err)
	}
	v := device.Whole(buf)
	d.Upload(v, x)
	return v
}

// BenchmarkLayerNorm times one LayerNorm forward plus backward over 2048
// rows of 256 (a GPT block's activations at batch 16, context 128) on one
// thread.
func BenchmarkLayerNorm(b *testing.B) {
	const rows, c = 2048, 256
	d, err := New(Config{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	x, dout := uploadF32(b, d, randSlice(r, rows*c, 1)), uploadF32(b, d, randSlice(r, rows*c, 1))
	w, bias := uploadF32(b, d, randSlice(r, c, 1)), uploadF32(b, d, randSlice(r, c, 1))
	out, dx := uploadF32(b, d, make([]float32, rows*c)), uploadF32(b, d, make([]float32, rows*c))
	dw, db := uploadF32(b, d, make([]float32, c)), uploadF32(b, d, make([]float32, c))
	mean, rstd := uploadF32(b, d, make([]float32, rows)), uploadF32(b, d, make([]float32, rows))
	b.SetBytes(int64(rows * c * 4))
	for b.Loop() {
		d.LayerNorm(out, mean, rstd, x, w, bias, rows, c, 1e-5)
		d.LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd, rows, c)
	}
}

// lnWidths are row widths around the 8-lane vectors and the 4×8 unrolled
// sums, the masked tails included.
var lnWidths = []int{1, 7, 8, 9, 31, 256, 257, 768}

// maxAbsDiff is the largest |a[i] − b[i]| and the largest |b[i]|.
func maxAbsDiff(a, b []float32) (diff, scale float64) {
	for i := range b {
		diff = max(diff, math.Abs(float64(a[i])-float64(b[i])))
		scale = max(scale, math.Abs(float64(b[i])))
	}
	return diff, scale
}

// TestVecLayerNorm checks the SIMD LayerNorm row kernels against the
// portable loops on every width of lnWidths, and that the masked tails
// neither read nor write past the row (the slices end inside guard
// elements that must stay untouched).
func TestVecLayerNorm(t *testing.T) {
	const guard = 9
	for _, k := range vecKernelsUnderTest(t) {
		r := rand.New(rand.NewPCG(7, 8))
		for _, c := range lnWidths {
			x, w, b := randSlice(r, c+guard, 2), randSlice(r, c+guard, 1), randSlice(r, c+guard, 1)
			for i := range x {
				x[i] += 3 // a mean well away from zero
			}
			dout := randSlice(r, c+guard, 1)
			dx0, dw0, db0 := randSlice(r, c+guard, 1), randSlice(r, c+guard, 1), randSlice(r, c+guard, 1)
			out := [2][]float32{randSlice(r, c+guard, 1), nil}
			out[1] = append([]float32(nil), out[0]...)
			var mean, rstd [2]float32
			var dx, dw, db [2][]float32
			for i, kk := range []*kernel{k, genericKernel} {
				mean[i], rstd[i] = kk.layerNormRow(out[i][:c], x[:c], w[:c], b[:c], 1e-5)
				dx[i], dw[i], db[i] = append([]float32(nil), dx0...), append([]float32(nil), dw0...), append([]float32(nil), db0...)
				kk.layerNormBackwardRow(dx[i][:c], dw[i][:c], db[i][:c], dout[:c], x[:c], w[:c], mean[i], rstd[i])
			}
			if d := math.Abs(float64(mean[0] - mean[1])); d > 1e-6*(1+math.Abs(float64(mean[1]))) {
				t.Errorf("%s c=%d: mean %g want %g", k.name, c, mean[0], mean[1])
			}
			if d := math.Abs(float64(rstd[0] - rstd[1])); d > 2e-6*float64(rstd[1]) {
				t.Errorf("%s c=%d: rstd %g want %g", k.name, c, rstd[0], rstd[1])
			}
			for _, s := range []struct {
				name     string
				got, ref []float32
				tol      float64
			}{{"out", out[0], out[1], 2e-6}, {"dx", dx[0], dx[1], 2e-6}, {"dw", dw[0], dw[1], 2e-6}, {"db", db[0], db[1], 0}} {
				if d, sc := maxAbsDiff(s.got[:c], s.ref[:c]); d > s.tol*sc {
					t.Errorf("%s c=%d: %s differs by %g (scale %g)", k.name, c, s.name, d, sc)
				}
				for i := c; i < c+guard; i++ {
					if s.got[i] != s.ref[i] {
						t.Errorf("%s c=%d: %s written past the row at %d", k.name, c, s.name, i)
					}
				}
			}
		}
	}
}

// TestLayerNormThreadsBitwise runs LayerNorm and LayerNormBackward with 1,
// 2 and 3 threads on every kernel and wants identical bits: rows are
// independent and dw, db add over a partition fixed by the shape alone.
func TestLayerNormThreadsBitwise(t *testing.T) {
	for _, kn := range KernelNames() {
		for _, c := range lnWidths {
			rows := max(70, 4*lnBlockRows(c)+5) // several backward blocks, a short last one
			r := rand.New(rand.NewPCG(uint64(c), 9))
			x, w, b, dout := randSlice(r, rows*c, 2), randSlice(r, c, 1), randSlice(r, c, 1), randSlice(r, rows*c, 1)
			dx0, dw0, db0 := randSlice(r, rows*c, 1), randSlice(r, c, 1), randSlice(r, c, 1)
			var ref [][]float32
			for _, threads := range []int{1, 2, 3} {
				d, err := New(Config{Threads: threads, Kernel: kn})
				if err != nil {
					t.Fatal(err)
				}
				out, mean, rstd := uploadF32(t, d, make([]float32, rows*c)), uploadF32(t, d, make([]float32, rows)), uploadF32(t, d, make([]float32, rows))
				dx, dw, db := uploadF32(t, d, dx0), uploadF32(t, d, dw0), uploadF32(t, d, db0)
				xv, wv := uploadF32(t, d, x), uploadF32(t, d, w)
				d.LayerNorm(out, mean, rstd, xv, wv, uploadF32(t, d, b), rows, c, 1e-5)
				d.LayerNormBackward(dx, dw, db, uploadF32(t, d, dout), xv, wv, mean, rstd, rows, c)
				got := [][]float32{d.HostF32(out), d.HostF32(mean), d.HostF32(rstd), d.HostF32(dx), d.HostF32(dw), d.HostF32(db)}
				if ref == nil {
					ref = got
					continue
				}
				for i, name := range []string{"out", "mean", "rstd", "dx", "dw", "db"} {
					for j := range ref[i] {
						if math.Float32bits(got[i][j]) != math.Float32bits(ref[i][j]) {
							t.Fatalf("%s c=%d rows=%d: %s[%d] with %d threads %g, with 1 %g", kn, c, rows, name, j, threads, got[i][j], ref[i][j])
						}
					}
				}
			}
		}
	}
}
