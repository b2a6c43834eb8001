package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// BenchmarkGPTStep times one training step (forward, loss, backward, AdamW)
// of a 4-layer, d_model 256 GPT on the CPU device with one thread.
func BenchmarkGPTStep(b *testing.B) {
	for _, prec := range []tensor.DType{tensor.F32, tensor.BF16} {
		b.Run(prec.String(), func(b *testing.B) {
			be := gptCPU(b, 1)
			cfg := GPTConfig{Layers: 4, Heads: 4, DModel: 256, Context: 128, Vocab: 256, Precision: prec}
			g, err := NewGPT(be, cfg, StageRange{0, cfg.Layers}, 1)
			if err != nil {
				b.Fatal(err)
			}
			const batch, T = 16, 128
			if err := g.Reserve(batch * T); err != nil {
				b.Fatal(err)
			}
			bt := randomBatch(b, be, rand.New(rand.NewPCG(1, 1)), batch, T, cfg.Vocab)
			opt := newGPTAdam(b, g)
			step := func() {
				g.ZeroGrad()
				g.Forward(bt.ids, batch, T)
				g.Loss(bt.targets, bt.losses, 1)
				g.Backward(device.View{})
				opt.update(g, 1e-4, batch*T)
			}
			step()
			if err := be.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			if err := be.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N*batch*T)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// TestGPTBackendsAgree runs one step on the reference backend and on the CPU
// device and compares the loss and every gradient.
func TestGPTBackendsAgree(t *testing.T) {
	bes := gptBackends(t, 3)
	for _, tied := range []bool{false, true} {
		var losses []float64
		var grads [][]float32
		for _, be := range bes {
			cfg := tinyGPT(tied)
			g, err := NewGPT(be, cfg, StageRange{0, 2}, 21)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(4, 4))
			perturbParams(g, r)
			bt := randomBatch(t, be, r, 2, 8, cfg.Vocab)
			losses = append(losses, gptStep(g, bt))
			grads = append(grads, download(be, g.GradBuffer()))
		}
		if math.Abs(losses[0]-losses[1]) > 1e-5*math.Abs(losses[0]) {
			t.Fatalf("tied=%v: loss ref %v cpu %v", tied, losses[0], losses[1])
		}
		var maxAbs float64
		for _, x := range grads[0] {
			maxAbs = math.Max(maxAbs, math.Abs(float64(x)))
		}
		for i := range grads[0] {
			a, b := float64(grads[0][i]), float64(grads[1][i])
			// fp32 accumulation in another order than the reference's
			// float64: most gradients agree to ~1e-5, a few small ones
			// (where terms cancel) to ~1e-4.
			if math.Abs(a-b) > 3e-4*math.Max(math.Abs(a), 1e-2*maxAbs) {
				t.Fatalf("tied=%v: grad %d ref %v cpu %v", tied, i, a, b)
			}
		}
	}
}
