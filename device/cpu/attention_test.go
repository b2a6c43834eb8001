package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// refAttention is causal attention in float64, materialising the scores:
// it returns out, lse and, given dout, dqkv (layouts as Attention's).
func refAttention(qkv, dout []float32, b, t, heads, hs int) (out, lse, dqkv []float64) {
	c := heads * hs
	out = make([]float64, b*t*c)
	lse = make([]float64, b*heads*t)
	dqkv = make([]float64, b*t*3*c)
	scale := 1 / math.Sqrt(float64(hs))
	at := func(bb, s, part, h, d int) int { return (bb*t+s)*3*c + part*c + h*hs + d }
	p := make([]float64, t)
	dp := make([]float64, t)
	for bb := 0; bb < b; bb++ {
		for h := 0; h < heads; h++ {
			for s := 0; s < t; s++ {
				m := math.Inf(-1)
				for j := 0; j <= s; j++ {
					var dot float64
					for d := 0; d < hs; d++ {
						dot += float64(qkv[at(bb, s, 0, h, d)]) * float64(qkv[at(bb, j, 1, h, d)])
					}
					p[j] = dot * scale
					m = math.Max(m, p[j])
				}
				var sum float64
				for j := 0; j <= s; j++ {
					p[j] = math.Exp(p[j] - m)
					sum += p[j]
				}
				lse[(bb*heads+h)*t+s] = m + math.Log(sum)
				o := out[(bb*t+s)*c+h*hs:]
				for j := 0; j <= s; j++ {
					p[j] /= sum
					for d := 0; d < hs; d++ {
						o[d] += p[j] * float64(qkv[at(bb, j, 2, h, d)])
					}
				}
				if dout == nil {
					continue
				}
				g := dout[(bb*t+s)*c+h*hs:]
				var D float64
				for j := 0; j <= s; j++ {
					var dot float64
					for d := 0; d < hs; d++ {
						dot += float64(g[d]) * float64(qkv[at(bb, j, 2, h, d)])
					}
					dp[j] = dot
					D += p[j] * dot
				}
				for j := 0; j <= s; j++ {
					ds := p[j] * (dp[j] - D) * scale
					for d := 0; d < hs; d++ {
						dqkv[at(bb, s, 0, h, d)] += ds * float64(qkv[at(bb, j, 1, h, d)])
						dqkv[at(bb, j, 1, h, d)] += ds * float64(qkv[at(bb, s, 0, h, d)])
						dqkv[at(bb, j, 2, h, d)] += p[j] * float64(g[d])
					}
				}
			}
		}
	}
	return out, lse, dqkv
}

func randSlice(r *rand.Rand, n int, s float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * s)
	}
	return x
}

// closeTo checks got against want to tol relative to want's largest
// magnitude (at least 1).
func closeTo(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	big := 1.0
	for _, w := range want {
		big = math.Max(big, math.Abs(w))
	}
	for i, w := range want {
		if d := math.Abs(float64(got[i]) - w); !(d <= tol*big) {
			t.Fatalf("%s[%d] = %g, want %g (|diff| %.3g > %.3g)", what, i, got[i], w, d, tol*big)
		}
	}
}

func TestAttentionMatchesReference(t *testing.T) {
	shapes := []struct{ b, t, heads, hs int }{
		{1, 1, 1, 1}, {2, 1, 2, 8}, {1, 5, 3, 3}, {2, 7, 2, 17}, {1, 97, 2, 13},
		{2, 64, 3, 64}, {1, 130, 2, 33}, {3, 193, 1, 24}, {1, 200, 5, 40},
	}
	for _, threads := range []int{1, 2} {
		for _, d := range kernelDevices(t, threads) {
			for _, sh := range shapes {
				t.Run(fmt.Sprintf("%s/threads=%d/b%d_t%d_h%d_hs%d", d.Kernel(), threads, sh.b, sh.t, sh.heads, sh.hs), func(t *testing.T) {
					r := rand.New(rand.NewPCG(uint64(sh.t), uint64(sh.hs)))
					c := sh.heads * sh.hs
					qkv := randSlice(r, sh.b*sh.t*3*c, 1.5)
					dout := randSlice(r, sh.b*sh.t*c, 1)
					wOut, wLse, wD := refAttention(qkv, dout, sh.b, sh.t, sh.heads, sh.hs)
					out := randSlice(r, len(wOut), 1)
					lse := randSlice(r, len(wLse), 1)
					d.attentionForward(out, lse, qkv, sh.b, sh.t, sh.heads, sh.hs)
					closeTo(t, "out", out, wOut, 1e-5)
					closeTo(t, "lse", lse, wLse, 1e-5)
					dqkv := randSlice(r, len(wD), 1) // overwritten
					d.attentionBackward(dqkv, dout, qkv, out, lse, sh.b, sh.t, sh.heads, sh.hs)
					closeTo(t, "dqkv", dqkv, wD, 2e-5)
				})
			}
		}
	}
}

// TestAttentionSplitMatchesWhole runs a shape whose (batch, head) pairs
// are split across threads (3 pairs on 2 threads) and checks it is the
// reference too, so both work splits are covered at every kernel.
func TestAttentionSplitMatchesWhole(t *testing.T) {
	for _, d := range kernelDevices(t, 2) {
		if !d.attnSplit(3, 3) {
			t.Fatal("3 pairs on 2 threads should split")
		}
		b, tt, heads, hs := 1, 250, 3, 20
		r := rand.New(rand.NewPCG(7, 8))
		qkv := randSlice(r, b*tt*3*heads*hs, 1)
		dout := randSlice(r, b*tt*heads*hs, 1)
		wOut, wLse, wD := refAttention(qkv, dout, b, tt, heads, hs)
		out := make([]float32, len(wOut))
		lse := make([]float32, len(wLse))
		dqkv := make([]float32, len(wD))
		d.attentionForward(out, lse, qkv, b, tt, heads, hs)
		d.attentionBackward(dqkv, dout, qkv, out, lse, b, tt, heads, hs)
		closeTo(t, d.Kernel()+" out", out, wOut, 1e-5)
		closeTo(t, d.Kernel()+" lse", lse, wLse, 1e-5)
		closeTo(t, d.Kernel()+" dqkv", dqkv, wD, 2e-5)
	}
}

// TestAttentionNoAllocs checks the steady state allocates no scratch.
func TestAttentionNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	d, err := New(Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, tt, heads, hs := 1, 300, 2, 32
	r := rand.New(rand.NewPCG(1, 1))
	qkv := randSlice(r, b*tt*3*heads*hs, 1)
	dout := randSlice(r, b*tt*heads*hs, 1)
	out := make([]float32, len(dout))
	lse := make([]float32, b*heads*tt)
	dqkv := make([]float32, len(qkv))
	n := testing.AllocsPerRun(5, func() {
		d.attentionForward(out, lse, qkv, b, tt, heads, hs)
		d.attentionBackward(dqkv, dout, qkv, out, lse, b, tt, heads, hs)
	})
	// Only the closures handed to Device.parallel (one per op) may be
	// allocated: the workspace is reused, whatever t is.
	if n > 2 {
		t.Fatalf("%v allocations per forward+backward, want at most 2", n)
	}
}

// BenchmarkAttention times one forward plus one backward per op at b=1,
// heads=4, hs=64.
//
// Flop convention: a causal head does about T²/2 useful score entries.
// Forward is two products per entry (S = QKᵀ, O += PV), each hs
// multiply-adds = 2·hs flops, so 2·T²·hs flops per head (= 4·T²·hs for the
// full square, halved by the mask). Backward recomputes S and forms dP,
// dV, dK and dQ: five products, 5·T²·hs flops per head. GFLOP/s reports
// (2+5)·T²·hs·heads·b / time, the exponentials and packing not counted.
func BenchmarkAttention(b *testing.B) {
	for _, T := range []int{128, 256, 512, 1024, 2048} {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			d, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			bs, heads, hs := 1, 4, 64
			r := rand.New(rand.NewPCG(1, 2))
			qkv := randSlice(r, bs*T*3*heads*hs, 1)
			dout := randSlice(r, bs*T*heads*hs, 1)
			out := make([]float32, len(dout))
			lse := make([]float32, bs*heads*T)
			dqkv := make([]float32, len(qkv))
			d.attentionForward(out, lse, qkv, bs, T, heads, hs)
			d.attentionBackward(dqkv, dout, qkv, out, lse, bs, T, heads, hs)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				d.attentionForward(out, lse, qkv, bs, T, heads, hs)
				d.attentionBackward(dqkv, dout, qkv, out, lse, bs, T, heads, hs)
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			flops := float64(bs*heads*hs) * float64(T) * float64(T)
			b.ReportMetric(7*flops/sec/1e9, "GFLOP/s")
			var ws int
			for _, s := range d.attn {
				ws += cap(s.f) * 4
			}
			b.ReportMetric(float64(ws), "scratch-bytes")
		})
	}
}

// BenchmarkAttentionForward times the forward alone (2·T²·hs flops per
// head, see BenchmarkAttention).
func BenchmarkAttentionForward(b *testing.B) {
	for _, T := range []int{128, 512, 2048} {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			d, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			bs, heads, hs := 1, 4, 64
			r := rand.New(rand.NewPCG(1, 2))
			qkv := randSlice(r, bs*T*3*heads*hs, 1)
			out := make([]float32, bs*T*heads*hs)
			lse := make([]float32, bs*heads*T)
			b.ReportAllocs()
			for b.Loop() {
				d.attentionForward(out, lse, qkv, bs, T, heads, hs)
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(2*float64(bs*heads*hs)*float64(T)*float64(T)/sec/1e9, "GFLOP/s")
		})
	}
}
