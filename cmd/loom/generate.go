package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

type generateOpts struct {
	prompt, promptFile, tokenizer, device string
	maxTokens, topK                       int
	temperature, topP                     float64
	seed                                  uint64
	noCache, asJSON                       bool
}

func newGenerateCmd() *cobra.Command {
	var o generateOpts
	cmd := &cobra.Command{
		Use:   "generate DIR",
		Short: "Sample text from a GPT checkpoint or Hugging Face GPT-2 directory",
		Long: `Load a GPT from DIR — a loom checkpoint directory (checksums verified) or a
Hugging Face GPT-2 directory (config.json and model.safetensors) — encode the
prompt with the tokenizer it was trained with and sample up to --max-tokens
tokens, printing them as they come. A KV cache keeps every layer's keys and
values, so each new token costs one row through the model (--no-cache
recomputes the whole prefix instead, to compare).

Sampling: the logits are divided by --temperature (0: always the most
likely token), cut to the --top-k most likely (0: all) and to the smallest
set whose probability reaches --top-p (1: all), then drawn with --seed.
Generation stops at --max-tokens, at the end-of-text token, or when the
model's context is full. Statistics go to stderr; --json prints one object
(text, token ids, tokens/s, why it stopped) instead.`,
		Example: `  loom generate checkpoints/gpt-gosrc/step-00000600 --prompt 'func main() {'
  loom generate checkpoints/gpt-gosrc/step-00000600 --prompt 'package http' --temperature 0.8 --top-k 40 --seed 7
  loom generate ./gpt2-hf --tokenizer gpt2 --prompt 'Hello' --max-tokens 50 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGenerate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.prompt, "prompt", "", "text to continue")
	f.StringVar(&o.promptFile, "prompt-file", "", "read the prompt from this file (- for stdin)")
	f.IntVar(&o.maxTokens, "max-tokens", 200, "most tokens to generate")
	f.Float64Var(&o.temperature, "temperature", 1, "softmax temperature; 0 picks the most likely token")
	f.IntVar(&o.topK, "top-k", 0, "sample among the k most likely tokens (0: all)")
	f.Float64Var(&o.topP, "top-p", 1, "sample among the most likely tokens whose probabilities sum to p (nucleus)")
	f.Uint64Var(&o.seed, "seed", 0, "random seed of the sampler")
	f.StringVar(&o.tokenizer, "tokenizer", "", "tokenizer ("+strings.Join(data.TokenizerNames, ", ")+"); default: the one the directory names")
	f.StringVar(&o.device, "device", "cpu", "device spec")
	f.BoolVar(&o.noCache, "no-cache", false, "recompute the whole prefix for every token instead of using the KV cache")
	f.BoolVar(&o.asJSON, "json", false, "print one JSON object instead of streaming text")
	return cmd
}

func (o *generateOpts) check() error {
	switch {
	case o.maxTokens < 1:
		return fmt.Errorf("--max-tokens must be >= 1, got %d", o.maxTokens)
	case o.temperature < 0 || math.IsNaN(o.temperature) || math.IsInf(o.temperature, 0):
		return fmt.Errorf("--temperature must be a finite number >= 0, got %g", o.temperature)
	case o.topK < 0:
		return fmt.Errorf("--top-k must be >= 0, got %d", o.topK)
	case !(o.topP > 0 && o.topP <= 1):
		return fmt.Errorf("--top-p must be in (0, 1], got %g", o.topP)
	case o.prompt != "" && o.promptFile != "":
		return errors.New("give --prompt or --prompt-file, not both")
	}
	return nil
}

// generation is what --json prints.
type generation struct {
	Dir             string  `json:"dir"`
	Prompt          string  `json:"prompt"`
	Text            string  `json:"text"`
	PromptTokens    int     `json:"prompt_tokens"`
	Tokens          []int   `json:"tokens"`
	Stop            string  `json:"stop"` // max_tokens | eos | context
	PrefillSeconds  float64 `json:"prefill_seconds"`
	TokensPerSecond float64 `json:"tokens_per_second"`
	KVCache         bool    `json:"kv_cache"`
}

func runGenerate(ctx context.Context, stdout, stderr io.Writer, dir string, o generateOpts) error {
	if err := o.check(); err != nil {
		return err
	}
	prompt := o.prompt
	if o.promptFile != "" {
		var b []byte
		var err error
		if o.promptFile == "-" {
			b, err = io.ReadAll(os.Stdin)
		} else {
			b, err = os.ReadFile(o.promptFile)
		}
		if err != nil {
			return fmt.Errorf("--prompt-file: %w", err)
		}
		prompt = string(b)
	}
	if prompt == "" {
		return errors.New("the prompt is empty: give --prompt TEXT or --prompt-file FILE")
	}
	w, err := train.LoadGPTDir(ctx, dir)
	if err != nil {
		return err
	}
	tokName := o.tokenizer
	switch {
	case tokName == "" && w.Tokenizer != "":
		tokName = w.Tokenizer
	case tokName == "":
		return fmt.Errorf("%s does not say which tokenizer it was trained with: pass --tokenizer (%s)", dir, strings.Join(data.TokenizerNames, " or "))
	case w.Tokenizer != "" && tokName != w.Tokenizer:
		return fmt.Errorf("--tokenizer %s, but %s was trained with %s", tokName, dir, w.Tokenizer)
	}
	tok, err := data.NewTokenizer(tokName)
	if err != nil {
		return err
	}
	if tok.Vocab() > w.Config.Vocab {
		return fmt.Errorf("tokenizer %s has %d ids, the model in %s only %d", tokName, tok.Vocab(), dir, w.Config.Vocab)
	}
	ids := tok.Encode(prompt)
	if len(ids) > w.Config.Context {
		return fmt.Errorf("the prompt is %d tokens, longer than the model's context of %d", len(ids), w.Config.Context)
	}
	be, err := openBackend(o.device)
	if err != nil {
		return err
	}
	dec, g, err := newDecoder(be, w)
	if err != nil {
		return err
	}
	defer g.Free()
	defer dec.Free()

	res := generation{Dir: dir, Prompt: prompt, PromptTokens: len(ids), KVCache: !o.noCache, Stop: "max_tokens", Tokens: []int{}}
	seq := make([]int32, len(ids), w.Config.Context)
	for i, id := range ids {
		seq[i] = int32(id)
	}
	sampler := newTokenSampler(o)
	stream := &tokenStream{tok: tok, out: stdout, on: !o.asJSON}
	start := time.Now()
	var logits []float32
	if o.noCache {
		logits, err = dec.Recompute(seq)
	} else {
		logits, err = dec.Prefill(seq)
	}
	if err != nil {
		return err
	}
	res.PrefillSeconds = time.Since(start).Seconds()
	genStart := time.Now()
	for len(res.Tokens) < o.maxTokens {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Only ids the tokenizer has: a vocab padded past it (50304 for
		// GPT-2's 50257) has rows no text ever trained.
		next := sampler.next(logits[:tok.Vocab()])
		if next == tok.EOT() {
			res.Stop = "eos"
			break
		}
		res.Tokens = append(res.Tokens, next)
		stream.add(next)
		if len(seq) == w.Config.Context {
			res.Stop = "context"
			break
		}
		seq = append(seq, int32(next))
		if len(res.Tokens) == o.maxTokens {
			break // the logits after the last token are not needed
		}
		if o.noCache {
			logits, err = dec.Recompute(seq)
		} else {
			logits, err = dec.Step(int32(next))
		}
		if err != nil {
			return err
		}
	}
	elapsed := time.Since(genStart).Seconds()
	if n := len(res.Tokens); n > 0 && elapsed > 0 {
		res.TokensPerSecond = float64(n) / elapsed
	}
	stream.flush()
	res.Text = tok.Decode(res.Tokens)
	if o.asJSON {
		b, _ := json.Marshal(res)
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	fmt.Fprintln(stdout)
	why := map[string]string{"max_tokens": "--max-tokens reached", "eos": "end of text", "context": fmt.Sprintf("the model's context of %d tokens is full", w.Config.Context)}[res.Stop]
	cache := "KV cache"
	if o.noCache {
		cache = "no cache"
	}
	fmt.Fprintf(stderr, "%d prompt tokens (%.0f ms), %d generated at %.1f tokens/s (%s; %s); stopped: %s\n",
		len(ids), 1000*res.PrefillSeconds, len(res.Tokens), res.TokensPerSecond, cache, be.Name(), why)
	return nil
}

// openBackend opens a device spec as a device API v2 backend.
func openBackend(spec string) (device.Backend, error) {
	d, err := openDevice("--device", spec)
	if err != nil {
		return nil, err
	}
	be, ok := d.(device.Backend)
	if !ok {
		return nil, fmt.Errorf("--device %s does not implement the device API a GPT needs", spec)
	}
	return be, nil
}

// newDecoder builds the whole model of w on be with its weights and a KV
// cache (fp32: the master weights as trained).
func newDecoder(be device.Backend, w *train.GPTWeights) (*model.Decoder, *model.GPT, error) {
	g, err := w.NewGPT(be)
	if err != nil {
		return nil, nil, err
	}
	dec, err := model.NewDecoder(g)
	if err != nil {
		g.Free()
		return nil, nil, err
	}
	return dec, g, nil
}

// tokenSampler draws the next token from logits with temperature, top-k and
// top-p.
type tokenSampler struct {
	temperature, topP float64
	topK              int
	rng               *rand.Rand
	idx               []int
	probs             []float64
}

func newTokenSampler(o generateOpts) *tokenSampler {
	return &tokenSampler{temperature: o.temperature, topP: o.topP, topK: o.topK, rng: rand.New(rand.NewPCG(o.seed, 0x6c6f6f6d))}
}

func (s *tokenSampler) next(logits []float32) int {
	if s.temperature == 0 {
		best := 0
		for i, x := range logits {
			if x > logits[best] {
				best = i
			}
		}
		return best
	}
	s.idx = s.idx[:0]
	for i := range logits {
		s.idx = append(s.idx, i)
	}
	if s.topK > 0 || s.topP < 1 {
		sort.Slice(s.idx, func(a, b int) bool { return logits[s.idx[a]] > logits[s.idx[b]] })
		if s.topK > 0 && s.topK < len(s.idx) {
			s.idx = s.idx[:s.topK]
		}
	}
	hi := math.Inf(-1)
	for _, i := range s.idx {
		hi = math.Max(hi, float64(logits[i]))
	}
	s.probs = s.probs[:0]
	sum := 0.0
	for _, i := range s.idx {
		p := math.Exp((float64(logits[i]) - hi) / s.temperature)
		s.probs = append(s.probs, p)
		sum += p
	}
	if s.topP < 1 {
		acc := 0.0
		for k, p := range s.probs {
			acc += p / sum
			if acc >= s.topP {
				s.idx, s.probs = s.idx[:k+1], s.probs[:k+1]
				break
			}
		}
		sum = 0
		for _, p := range s.probs {
			sum += p
		}
	}
	u := s.rng.Float64() * sum
	for k, p := range s.probs {
		if u < p {
			return s.idx[k]
		}
		u -= p
	}
	return s.idx[len(s.idx)-1]
}

// tokenStream prints generated tokens as they come, holding back only the
// bytes of a character a token has begun and a later one may finish (at
// most 3); bytes that can never be valid UTF-8 print as U+FFFD.
type tokenStream struct {
	tok     data.Tokenizer
	out     io.Writer
	on      bool
	pending []byte
}

func (t *tokenStream) add(id int) {
	if !t.on {
		return
	}
	t.pending = append(t.pending, t.tok.Decode([]int{id})...)
	keep := 0
	for k := 1; k <= 3 && k <= len(t.pending); k++ {
		// A lead byte in the last k bytes whose character needs more.
		tail := t.pending[len(t.pending)-k:]
		if utf8.RuneStart(tail[0]) {
			if !utf8.FullRune(tail) {
				keep = k
			}
			break
		}
	}
	io.WriteString(t.out, strings.ToValidUTF8(string(t.pending[:len(t.pending)-keep]), "\uFFFD"))
	t.pending = append(t.pending[:0], t.pending[len(t.pending)-keep:]...)
}

func (t *tokenStream) flush() {
	if t.on && len(t.pending) > 0 {
		io.WriteString(t.out, strings.ToValidUTF8(string(t.pending), "\uFFFD"))
		t.pending = t.pending[:0]
	}
}
