package devicetest

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// numGradAt is numGrad restricted to the coordinates idx (nil: all); the
// other entries of the result are NaN.
func numGradAt(f func() float64, x []float64, idx []int) []float64 {
	if idx == nil {
		return numGrad(f, x)
	}
	const h = 1e-5
	g := make([]float64, len(x))
	for i := range g {
		g[i] = math.NaN()
	}
	for _, i := range idx {
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

// sample returns up to k distinct indices of [0, n) (all when n ≤ k: nil).
func sample(r *rand.Rand, n, k int) []int {
	if n <= k {
		return nil
	}
	return r.Perm(n)[:k]
}

// nearAt is near over the coordinates idx (nil: all) of got, after removing
// the values the output held before the op accumulated into it.
func nearAt(t *testing.T, what string, got, before []float32, want []float64, idx []int, atol, rtol float64) {
	t.Helper()
	if idx == nil {
		idx = make([]int, len(want))
		for i := range idx {
			idx[i] = i
		}
	}
	for _, i := range idx {
		g := float64(got[i]) - float64(before[i])
		if !(math.Abs(g-want[i]) <= atol+rtol*math.Abs(want[i])) {
			t.Fatalf("%s[%d] = %.9g, want %.9g (atol %g, rtol %g)", what, i, g, want[i], atol, rtol)
		}
	}
}

func testBias(t *testing.T, be device.Backend) {
	r := rng(3)
	for _, s := range [][2]int{{1, 1}, {7, 13}, {300, 257}} {
		rows, cols := s[0], s[1]
		x, bias, pre := randn(r, rows*cols), randn(r, cols), randn(r, cols)
		xv, bv := upload(t, be, tensor.F32, x), upload(t, be, tensor.F32, bias)
		be.BiasAdd(xv, bv, rows, cols)
		want := make([]float64, rows*cols)
		for i := range want {
			want[i] = float64(x[i] + bias[i%cols])
		}
		near(t, "bias add", download(be, xv), want, 0, 0)
		dv := upload(t, be, tensor.F32, pre)
		be.BiasGrad(dv, upload(t, be, tensor.F32, x), rows, cols)
		wg := f64(pre)
		for i, v := range x {
			wg[i%cols] += float64(v)
		}
		near(t, "bias grad", download(be, dv), wg, 1e-5*float64(rows), 1e-6)
	}
}

func testEmbedding(t *testing.T, be device.Backend) {
	r := rng(4)
	for _, s := range [][3]int{{5, 3, 1}, {37, 11, 19}, {600, 50, 64}} {
		n, vocab, c := s[0], s[1], s[2]
		table, base := randn(r, vocab*c), randn(r, n*c)
		ids := make([]int32, n)
		for i := range ids {
			ids[i] = int32(r.IntN(vocab)) // repeats: n > vocab
		}
		tv, iv := upload(t, be, tensor.F32, table), uploadI32(t, be, ids)
		out := alloc(t, be, tensor.F32, n*c)
		be.Embedding(out, tv, iv, n, c, false)
		want := make([]float64, n*c)
		for i, id := range ids {
			for j := 0; j < c; j++ {
				want[i*c+j] = float64(table[int(id)*c+j])
			}
		}
		near(t, "embedding", download(be, out), want, 0, 0)
		acc := upload(t, be, tensor.F32, base)
		be.Embedding(acc, tv, iv, n, c, true)
		for i := range want {
			want[i] = float64(base[i] + float32(want[i]))
		}
		near(t, "embedding accumulate", download(be, acc), want, 0, 0)

		// Backward: the gradient of Σ dout·Embedding(table), by finite
		// differences of the float64 forward, added to what dtable held.
		dout, pre := randn(r, n*c), randn(r, vocab*c)
		tab := f64(table)
		d64 := f64(dout)
		fwd := func() float64 {
			var s float64
			for i, id := range ids {
				s += dot(tab[int(id)*c:int(id+1)*c], d64[i*c:(i+1)*c])
			}
			return s
		}
		idx := sample(r, len(tab), 200)
		num := numGradAt(fwd, tab, idx)
		dt := upload(t, be, tensor.F32, pre)
		be.EmbeddingBackward(dt, upload(t, be, tensor.F32, dout), iv, n, c)
		nearAt(t, "embedding backward", download(be, dt), pre, num, idx, 1e-4, 1e-4)
	}
}

// refLayerNorm is LayerNorm in float64; it returns out, mean and rstd.
func refLayerNorm(x, w, b []float64, rows, c int, eps float64) (out, mean, rstd []float64) {
	out, mean, rstd = make([]float64, rows*c), make([]float64, rows), make([]float64, rows)
	for i := 0; i < rows; i++ {
		row := x[i*c : (i+1)*c]
		var m, q float64
		for _, v := range row {
			m += v
		}
		m /= float64(c)
		for _, v := range row {
			q += (v - m) * (v - m)
		}
		rs := 1 / math.Sqrt(q/float64(c)+eps)
		mean[i], rstd[i] = m, rs
		for j, v := range row {
			out[i*c+j] = (v-m)*rs*w[j] + b[j]
		}
	}
	return out, mean, rstd
}

func testLayerNorm(t *testing.T, be device.Backend) {
	r := rng(5)
	const eps = 1e-5
	for _, s := range [][2]int{{1, 1}, {3, 7}, {9, 37}, {300, 64}} {
		rows, c := s[0], s[1]
		x, w, b := randn(r, rows*c), randn(r, c), randn(r, c)
		for i := range x {
			x[i] = x[i]*2 + 0.5 // a non-zero mean
		}
		xv, wv, bv := upload(t, be, tensor.F32, x), upload(t, be, tensor.F32, w), upload(t, be, tensor.F32, b)
		out, mv, rv := alloc(t, be, tensor.F32, rows*c), alloc(t, be, tensor.F32, rows), alloc(t, be, tensor.F32, rows)
		be.LayerNorm(out, mv, rv, xv, wv, bv, rows, c, eps)
		x64, w64, b64 := f64(x), f64(w), f64(b)
		wo, wm, wr := refLayerNorm(x64, w64, b64, rows, c, eps)
		near(t, "layernorm out", download(be, out), wo, 2e-5, 2e-5)
		near(t, "layernorm mean", download(be, mv), wm, 1e-6, 1e-6)
		near(t, "layernorm rstd", download(be, rv), wr, 1e-6, 1e-5)

		dout := randn(r, rows*c)
		d64 := f64(dout)
		loss := func() float64 {
			o, _, _ := refLayerNorm(x64, w64, b64, rows, c, eps)
			return dot(o, d64)
		}
		pdx, pdw, pdb := randn(r, rows*c), randn(r, c), randn(r, c)
		dx, dw, db := upload(t, be, tensor.F32, pdx), upload(t, be, tensor.F32, pdw), upload(t, be, tensor.F32, pdb)
		be.LayerNormBackward(dx, dw, db, upload(t, be, tensor.F32, dout), xv, wv, mv, rv, rows, c)
		idx := sample(r, rows*c, 60)
		nearAt(t, "layernorm dx", download(be, dx), pdx, numGradAt(loss, x64, idx), idx, 2e-4, 2e-4)
		nearAt(t, "layernorm dw", download(be, dw), pdw, numGrad(loss, w64), nil, 2e-4*float64(max(1, rows/8)), 2e-4)
		nearAt(t, "layernorm db", download(be, db), pdb, numGrad(loss, b64), nil, 2e-4*float64(max(1, rows/8)), 2e-4)
	}
}

func refGELU(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

func testGELU(t *testing.T, be device.Backend) {
	r := rng(6)
	for _, n := range []int{1, 17, 20001} {
		x := randn(r, n)
		for i := range x {
			x[i] *= 3
		}
		x[0] = -12 // deep tail
		xv := upload(t, be, tensor.F32, x)
		out := alloc(t, be, tensor.F32, n)
		be.GELU(out, xv)
		want := make([]float64, n)
		for i, v := range x {
			want[i] = refGELU(float64(v))
		}
		near(t, "gelu", download(be, out), want, 1e-6, 1e-5)

		dout := randn(r, n)
		dv := upload(t, be, tensor.F32, dout)
		dx := alloc(t, be, tensor.F32, n)
		be.GELUBackward(dx, xv, dv)
		wd := make([]float64, n)
		for i, v := range x {
			xs := []float64{float64(v)}
			wd[i] = float64(dout[i]) * numGrad(func() float64 { return refGELU(xs[0]) }, xs)[0]
		}
		near(t, "gelu backward", download(be, dx), wd, 1e-5, 1e-4)
		be.GELUBackward(dv, xv, dv) // dx aliases dout
		near(t, "gelu backward in place", download(be, dv), wd, 1e-5, 1e-4)
	}
}

func refSoftmax(row []float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, v)
	}
	out := make([]float64, len(row))
	var s float64
	for j, v := range row {
		out[j] = math.Exp(v - mx)
		s += out[j]
	}
	for j := range out {
		out[j] /= s
	}
	return out
}

func testSoftmax(t *testing.T, be device.Backend) {
	r := rng(7)
	for _, s := range [][2]int{{1, 1}, {5, 9}, {64, 333}} {
		rows, cols := s[0], s[1]
		x := randn(r, rows*cols)
		for i := range x {
			x[i] *= 4
		}
		want := make([]float64, 0, rows*cols)
		for i := 0; i < rows; i++ {
			want = append(want, refSoftmax(f64(x[i*cols:(i+1)*cols]))...)
		}
		xv := upload(t, be, tensor.F32, x)
		out := alloc(t, be, tensor.F32, rows*cols)
		be.Softmax(out, xv, rows, cols)
		near(t, "softmax", download(be, out), want, 1e-7, 1e-5)
		be.Softmax(xv, xv, rows, cols)
		near(t, "softmax in place", download(be, xv), want, 1e-7, 1e-5)
	}
}

// refCE is the per-row cross-entropy in float64 (0 for ignored rows).
func refCE(logits []float64, targets []int32, rows, v int) []float64 {
	loss := make([]float64, rows)
	for i, tg := range targets {
		if tg < 0 {
			continue
		}
		row := logits[i*v : (i+1)*v]
		mx := math.Inf(-1)
		for _, x := range row {
			mx = math.Max(mx, x)
		}
		var s float64
		for _, x := range row {
			s += math.Exp(x - mx)
		}
		loss[i] = mx + math.Log(s) - row[tg]
	}
	return loss
}

func testCrossEntropy(t *testing.T, be device.Backend) {
	r := rng(8)
	const scale = 0.25
	for _, s := range [][2]int{{1, 2}, {6, 11}, {40, 1001}} {
		rows, v := s[0], s[1]
		logits := randn(r, rows*v)
		for i := range logits {
			logits[i] *= 3
		}
		targets := make([]int32, rows)
		for i := range targets {
			targets[i] = int32(r.IntN(v))
		}
		if rows > 1 {
			targets[1] = -1 // ignored
		}
		l64 := f64(logits)
		want := refCE(l64, targets, rows, v)
		tv := uploadI32(t, be, targets)
		lv := upload(t, be, tensor.F32, logits)
		losses := alloc(t, be, tensor.F32, rows)
		be.CrossEntropy(losses, device.View{}, lv, tv, rows, v, scale)
		near(t, "cross entropy loss", download(be, losses), want, 1e-5, 1e-5)

		total := func() float64 {
			var s float64
			for _, l := range refCE(l64, targets, rows, v) {
				s += scale * l
			}
			return s
		}
		idx := sample(r, rows*v, 300)
		if rows > 1 { // the ignored row's gradient is exactly zero
			idx = append(idx, v, v+1)
		}
		num := numGradAt(total, l64, idx)
		dl := alloc(t, be, tensor.F32, rows*v)
		be.Fill(dl, float32(math.NaN())) // overwritten, NaNs included
		be.Fill(losses, 7)
		be.CrossEntropy(losses, dl, lv, tv, rows, v, scale)
		near(t, "cross entropy loss with grad", download(be, losses), want, 1e-5, 1e-5)
		zero := make([]float32, rows*v)
		nearAt(t, "cross entropy dlogits", download(be, dl), zero, num, idx, 1e-5, 1e-4)
		be.CrossEntropy(losses, lv, lv, tv, rows, v, scale) // dlogits aliases logits
		near(t, "cross entropy loss in place", download(be, losses), want, 1e-5, 1e-5)
		nearAt(t, "cross entropy dlogits in place", download(be, lv), zero, num, idx, 1e-5, 1e-4)
	}
}

func testReductions(t *testing.T, be device.Backend) {
	r := rng(9)
	for _, n := range []int{0, 1, 31, 100003} {
		x := randn(r, n)
		var s, q float64
		for _, v := range x {
			s += float64(v)
			q += float64(v) * float64(v)
		}
		xv := upload(t, be, tensor.F32, x)
		out := upload(t, be, tensor.F32, []float32{1.5, 9})
		be.Sum(out, xv)
		near(t, "sum", download(be, out), []float64{1.5 + s, 9}, 1e-6, 1e-6)
		be.Fill(out, 2)
		be.SumSquares(out.Slice(0, 1), xv)
		near(t, "sum of squares", download(be, out), []float64{2 + q, 2}, 1e-6, 1e-6)
		be.Fill(out, 3)
		be.NonFinite(out.Slice(0, 1), xv)
		near(t, "non-finite (none)", download(be, out), []float64{3, 3}, 0, 0)
		if n > 3 {
			x[0], x[n/2], x[n-1] = float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))
			x[1] = math.MaxFloat32 // finite
			be.Upload(xv, x)
			be.NonFinite(out.Slice(0, 1), xv)
			near(t, "non-finite", download(be, out), []float64{6, 3}, 0, 0)
		}
	}
}
