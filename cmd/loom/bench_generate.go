package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

func newBenchGenerateCmd() *cobra.Command {
	var (
		cfg     model.GPTConfig
		lengths []int
		steps   int
		dev     string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Tokens/s of generation with the KV cache vs recomputing the prefix",
		Long: `Time generating tokens from a GPT of the given shape (random weights: the
cost does not depend on them) at each prefix length in --lengths: the prefix
is prefilled, then --steps tokens are generated one at a time, once with the
KV cache (one row through the model per token) and once recomputing the
whole prefix per token, as a model without a cache must. The model's context
is the longest length.`,
		Example: `  loom bench generate --lengths 256,1024
  loom bench generate --layers 12 --heads 12 --d-model 768 --lengths 1024 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBenchGenerate(cmd.OutOrStdout(), cfg, lengths, steps, dev, asJSON)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Layers, "layers", 4, "transformer blocks")
	f.IntVar(&cfg.Heads, "heads", 4, "attention heads")
	f.IntVar(&cfg.DModel, "d-model", 256, "residual width")
	f.IntVar(&cfg.Vocab, "vocab", 50257, "vocabulary (50257: GPT-2's BPE)")
	f.IntSliceVar(&lengths, "lengths", []int{256, 1024}, "prefix lengths to time at")
	f.IntVar(&steps, "steps", 16, "tokens generated per length and mode")
	f.StringVar(&dev, "device", "cpu", "device spec")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per length")
	return cmd
}

type generateBenchResult struct {
	Length        int     `json:"length"`
	Steps         int     `json:"steps"`
	CachedTokS    float64 `json:"kv_cache_tokens_per_s"`
	RecomputeTokS float64 `json:"recompute_tokens_per_s"`
	Speedup       float64 `json:"speedup"`
	Device        string  `json:"device"`
}

func runBenchGenerate(out io.Writer, cfg model.GPTConfig, lengths []int, steps int, devSpec string, asJSON bool) error {
	if steps < 1 {
		return fmt.Errorf("--steps must be >= 1, got %d", steps)
	}
	for _, l := range lengths {
		if l <= steps {
			return fmt.Errorf("--lengths %d: each length must exceed --steps %d (the prefix is length − steps tokens)", l, steps)
		}
		cfg.Context = max(cfg.Context, l)
	}
	if len(lengths) == 0 {
		return fmt.Errorf("--lengths: give at least one length")
	}
	cfg.TieEmbeddings, cfg.Precision = true, tensor.F32
	be, err := openBackend(devSpec)
	if err != nil {
		return err
	}
	g, err := model.NewGPT(be, cfg, model.StageRange{First: 0, Last: cfg.Layers}, 1)
	if err != nil {
		return err
	}
	defer g.Free()
	dec, err := model.NewDecoder(g)
	if err != nil {
		return err
	}
	defer dec.Free()
	if !asJSON {
		fmt.Fprintf(out, "gpt %d layers, d_model %d, %d heads, vocab %d, fp32 on %s (%d threads)\n",
			cfg.Layers, cfg.DModel, cfg.Heads, cfg.Vocab, be.Name(), be.Threads())
		fmt.Fprintf(out, "%8s %16s %16s %8s\n", "LENGTH", "KV CACHE TOK/S", "RECOMPUTE TOK/S", "SPEEDUP")
	}
	for _, l := range lengths {
		seq := make([]int32, l)
		for i := range seq {
			seq[i] = int32((i * 7919) % cfg.Vocab)
		}
		prefix := l - steps
		dec.Reset()
		if _, err := dec.Prefill(seq[:prefix]); err != nil {
			return err
		}
		start := time.Now()
		for i := prefix; i < l; i++ {
			if _, err := dec.Step(seq[i]); err != nil {
				return err
			}
		}
		cached := float64(steps) / time.Since(start).Seconds()
		start = time.Now()
		for i := prefix; i < l; i++ {
			if _, err := dec.Recompute(seq[:i+1]); err != nil {
				return err
			}
		}
		recompute := float64(steps) / time.Since(start).Seconds()
		r := generateBenchResult{Length: l, Steps: steps, CachedTokS: cached, RecomputeTokS: recompute, Speedup: cached / recompute, Device: be.Name()}
		if asJSON {
			b, _ := json.Marshal(r)
			fmt.Fprintln(out, string(b))
			continue
		}
		fmt.Fprintf(out, "%8d %16.1f %16.1f %7.1fx\n", l, cached, recompute, r.Speedup)
	}
	return nil
}
