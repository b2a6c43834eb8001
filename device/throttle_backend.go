package device

import (
	"time"

	"github.com/loomtrain/loom/tensor"
)

// throttledBackend is Throttled for a device that implements Backend: every
// op of the stream is slowed by Factor, as the Device kernels are, so a
// slowdown=F worker trains a GPT as a machine F times slower would.
type throttledBackend struct {
	*Throttled
	b Backend
}

// throttledHostBackend adds the wrapped backend's HostMemory.
type throttledHostBackend struct {
	throttledBackend
	HostMemory
}

var (
	_ Backend    = (*throttledBackend)(nil)
	_ HostMemory = (*throttledHostBackend)(nil)
)

// throttle wraps d, keeping the interfaces it implements.
func throttle(d Device, factor float64) Device {
	t := &Throttled{Device: d, Factor: factor}
	b, ok := d.(Backend)
	if !ok {
		return t
	}
	tb := throttledBackend{Throttled: t, b: b}
	if h, ok := d.(HostMemory); ok {
		return &throttledHostBackend{throttledBackend: tb, HostMemory: h}
	}
	return &tb
}

func (tb *throttledBackend) Memory() (used, limit int64) { return tb.b.Memory() }

func (tb *throttledBackend) Alloc(dt tensor.DType, n int) (Buffer, error) { return tb.b.Alloc(dt, n) }

func (tb *throttledBackend) Sync() error { return tb.b.Sync() }

func (tb *throttledBackend) Upload(dst View, src []float32) {
	defer tb.pay(time.Now())
	tb.b.Upload(dst, src)
}

func (tb *throttledBackend) UploadInt32(dst View, src []int32) {
	defer tb.pay(time.Now())
	tb.b.UploadInt32(dst, src)
}

func (tb *throttledBackend) Download(dst []float32, src View) {
	defer tb.pay(time.Now())
	tb.b.Download(dst, src)
}

func (tb *throttledBackend) Copy(dst, src View) {
	defer tb.pay(time.Now())
	tb.b.Copy(dst, src)
}

func (tb *throttledBackend) Fill(x View, val float32) {
	defer tb.pay(time.Now())
	tb.b.Fill(x, val)
}

func (tb *throttledBackend) Scale(x View, s float32) {
	defer tb.pay(time.Now())
	tb.b.Scale(x, s)
}

func (tb *throttledBackend) Add(out, a, b View) {
	defer tb.pay(time.Now())
	tb.b.Add(out, a, b)
}

func (tb *throttledBackend) MatMul(g GemmSpec) {
	defer tb.pay(time.Now())
	tb.b.MatMul(g)
}

func (tb *throttledBackend) BiasAdd(x, bias View, rows, cols int) {
	defer tb.pay(time.Now())
	tb.b.BiasAdd(x, bias, rows, cols)
}

func (tb *throttledBackend) BiasGrad(dbias, dy View, rows, cols int) {
	defer tb.pay(time.Now())
	tb.b.BiasGrad(dbias, dy, rows, cols)
}

func (tb *throttledBackend) Embedding(out, table, ids View, n, c int, accumulate bool) {
	defer tb.pay(time.Now())
	tb.b.Embedding(out, table, ids, n, c, accumulate)
}

func (tb *throttledBackend) EmbeddingBackward(dtable, dout, ids View, n, c int) {
	defer tb.pay(time.Now())
	tb.b.EmbeddingBackward(dtable, dout, ids, n, c)
}

func (tb *throttledBackend) LayerNorm(out, mean, rstd, x, w, b View, rows, c int, eps float32) {
	defer tb.pay(time.Now())
	tb.b.LayerNorm(out, mean, rstd, x, w, b, rows, c, eps)
}

func (tb *throttledBackend) LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd View, rows, c int) {
	defer tb.pay(time.Now())
	tb.b.LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd, rows, c)
}

func (tb *throttledBackend) GELU(out, x View) {
	defer tb.pay(time.Now())
	tb.b.GELU(out, x)
}

func (tb *throttledBackend) GELUBackward(dx, x, dout View) {
	defer tb.pay(time.Now())
	tb.b.GELUBackward(dx, x, dout)
}

func (tb *throttledBackend) Softmax(out, x View, rows, cols int) {
	defer tb.pay(time.Now())
	tb.b.Softmax(out, x, rows, cols)
}

func (tb *throttledBackend) Attention(out, lse, qkv View, b, t, heads, hs int) {
	defer tb.pay(time.Now())
	tb.b.Attention(out, lse, qkv, b, t, heads, hs)
}

func (tb *throttledBackend) AttentionBackward(dqkv, dout, qkv, out, lse View, b, t, heads, hs int) {
	defer tb.pay(time.Now())
	tb.b.AttentionBackward(dqkv, dout, qkv, out, lse, b, t, heads, hs)
}

func (tb *throttledBackend) CrossEntropy(losses, dlogits, logits, targets View, rows, v int, scale float32) {
	defer tb.pay(time.Now())
	tb.b.CrossEntropy(losses, dlogits, logits, targets, rows, v, scale)
}

func (tb *throttledBackend) Sum(out, x View) {
	defer tb.pay(time.Now())
	tb.b.Sum(out, x)
}

func (tb *throttledBackend) SumSquares(out, x View) {
	defer tb.pay(time.Now())
	tb.b.SumSquares(out, x)
}

func (tb *throttledBackend) NonFinite(out, x View) {
	defer tb.pay(time.Now())
	tb.b.NonFinite(out, x)
}

func (tb *throttledBackend) AdamWUpdate(p, g, m, v View, h AdamW) {
	defer tb.pay(time.Now())
	tb.b.AdamWUpdate(p, g, m, v, h)
}

func (tb *throttledBackend) SGDUpdate(p, g, mom View, h SGD) {
	defer tb.pay(time.Now())
	tb.b.SGDUpdate(p, g, mom, h)
}
