package devicetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

func init() { runAttention = testAttention }

// refAttention is causal multi-head attention in float64 that materialises
// each head's scores: out (b, t, heads, hs) and lse (b, heads, t) from qkv
// packed (b, t, 3, heads, hs), as Backend.Attention defines them.
func refAttention(qkv []float64, b, t, heads, hs int) (out, lse []float64) {
	c := heads * hs
	out = make([]float64, b*t*c)
	lse = make([]float64, b*heads*t)
	scale := 1 / math.Sqrt(float64(hs))
	at := func(bb, s, part, h int) []float64 {
		i := (bb*t+s)*3*c + part*c + h*hs
		return qkv[i : i+hs]
	}
	p := make([]float64, t)
	for bb := range b {
		for h := range heads {
			for s := range t {
				q := at(bb, s, 0, h)
				m := math.Inf(-1)
				for j := 0; j <= s; j++ {
					p[j] = dot(q, at(bb, j, 1, h)) * scale
					m = math.Max(m, p[j])
				}
				var sum float64
				for j := 0; j <= s; j++ {
					p[j] = math.Exp(p[j] - m)
					sum += p[j]
				}
				lse[(bb*heads+h)*t+s] = m + math.Log(sum)
				o := out[(bb*t+s)*c+h*hs:][:hs]
				for j := 0; j <= s; j++ {
					v := at(bb, j, 2, h)
					for d := range o {
						o[d] += p[j] / sum * v[d]
					}
				}
			}
		}
	}
	return out, lse
}

// testAttention checks Attention against the float64 reference at shapes
// from one token to several tiles long (odd head sizes included), and
// AttentionBackward against central finite differences of that reference.
func testAttention(t *testing.T, be device.Backend) {
	r := rng(11)
	shapes := []struct{ b, t, heads, hs int }{
		{1, 1, 1, 1}, {2, 1, 2, 8}, {1, 5, 3, 3}, {2, 7, 2, 17},
		{1, 97, 2, 13}, {2, 64, 2, 64}, {1, 200, 3, 40},
	}
	for _, sh := range shapes {
		t.Run(fmt.Sprintf("b%d_t%d_h%d_hs%d", sh.b, sh.t, sh.heads, sh.hs), func(t *testing.T) {
			c := sh.heads * sh.hs
			qkv := randn(r, sh.b*sh.t*3*c)
			for i := range qkv {
				qkv[i] *= 1.5 // peaked softmaxes, not just near-uniform ones
			}
			q64 := f64(qkv)
			wOut, wLse := refAttention(q64, sh.b, sh.t, sh.heads, sh.hs)
			qv := upload(t, be, tensor.F32, qkv)
			out := upload(t, be, tensor.F32, randn(r, len(wOut))) // overwritten
			lse := upload(t, be, tensor.F32, randn(r, len(wLse)))
			be.Attention(out, lse, qv, sh.b, sh.t, sh.heads, sh.hs)
			near(t, "attention out", download(be, out), wOut, 2e-5, 2e-5)
			near(t, "attention lse", download(be, lse), wLse, 2e-5, 2e-6)

			dout := randn(r, len(wOut))
			d64 := f64(dout)
			loss := func() float64 {
				o, _ := refAttention(q64, sh.b, sh.t, sh.heads, sh.hs)
				return dot(o, d64)
			}
			dq := upload(t, be, tensor.F32, randn(r, len(qkv))) // overwritten
			be.AttentionBackward(dq, upload(t, be, tensor.F32, dout), qv, out, lse, sh.b, sh.t, sh.heads, sh.hs)
			idx := sample(r, len(qkv), 40)
			zero := make([]float32, len(qkv))
			nearAt(t, "attention dqkv", download(be, dq), zero, numGradAt(loss, q64, idx), idx, 2e-4, 2e-4)
		})
	}
}
