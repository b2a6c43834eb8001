package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestDecoderMatchesRecompute generates with the KV cache and checks every
// step's logits against a forward pass over the whole prefix, on both
// backends and with tied and untied embeddings, up to the full context.
func TestDecoderMatchesRecompute(t *testing.T) {
	for _, be := range gptBackends(t, 2) {
		for _, tied := range []bool{false, true} {
			cfg := tinyGPT(tied)
			g, err := NewGPT(be, cfg, StageRange{0, cfg.Layers}, 3)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(5, 6))
			perturbParams(g, r)
			d, err := NewDecoder(g)
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]int32, cfg.Context)
			for i := range ids {
				ids[i] = int32(r.IntN(cfg.Vocab))
			}
			const prompt = 3
			got, err := d.Prefill(ids[:prompt])
			if err != nil {
				t.Fatal(err)
			}
			for n := prompt; ; n++ {
				cached := append([]float32(nil), got...)
				want, err := d.Recompute(ids[:n])
				if err != nil {
					t.Fatal(err)
				}
				for j := range want {
					if math.Abs(float64(cached[j]-want[j])) > 1e-4*(1+math.Abs(float64(want[j]))) {
						t.Fatalf("%s tied=%v: after %d tokens logit %d: cached %v, recomputed %v", be.Name(), tied, n, j, cached[j], want[j])
					}
				}
				if n == cfg.Context {
					break
				}
				if got, err = d.Step(ids[n]); err != nil {
					t.Fatal(err)
				}
			}
			if d.Len() != cfg.Context {
				t.Fatalf("cache holds %d positions, want %d", d.Len(), cfg.Context)
			}
			if _, err := d.Step(0); err == nil || !strings.Contains(err.Error(), "whole context") {
				t.Fatalf("step past the context: %v", err)
			}
			d.Free()
			g.Free()
		}
	}
}

func TestDecoderErrors(t *testing.T) {
	be := gptCPU(t, 1)
	cfg := tinyGPT(true)
	g, err := NewGPT(be, cfg, StageRange{0, cfg.Layers}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free()
	d, err := NewDecoder(g)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	for _, c := range []struct {
		ids  []int32
		want string
	}{
		{nil, "empty prompt"},
		{make([]int32, cfg.Context+1), "longer than the model's context of 8"},
		{[]int32{1, int32(cfg.Vocab)}, "token 11 at position 1 is outside the vocabulary of 11"},
	} {
		if _, err := d.Prefill(c.ids); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("prefill %v: %v, want %q", c.ids, err, c.want)
		}
	}
	if _, err := d.Prefill([]int32{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Prefill([]int32{1}); err == nil || !strings.Contains(err.Error(), "non-empty cache") {
		t.Errorf("second prefill: %v", err)
	}
	half, err := NewGPT(be, GPTConfig{Layers: 2, Heads: 2, DModel: 16, Context: 8, Vocab: 11}, StageRange{0, 1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Free()
	if _, err := NewDecoder(half); err == nil || !strings.Contains(err.Error(), "whole model") {
		t.Errorf("decoder on a stage: %v", err)
	}
}
