package train

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
)

// tokensDir prepares GPT-2 token shards of a small Go-like corpus.
func tokensDir(t *testing.T, tokenizer string) string {
	t.Helper()
	in := t.TempDir()
	for i := range 20 {
		src := fmt.Sprintf("package p%d\n\n// Sum%d adds its arguments.\nfunc Sum%d(a, b int) int {\n\treturn a + b + %d\n}\n", i, i, i, i)
		if err := os.WriteFile(filepath.Join(in, fmt.Sprintf("f%02d.go", i)), []byte(strings.Repeat(src, 4)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := data.DefaultPrepareConfig()
	c.Inputs, c.Out, c.Tokenizer, c.ShardTokens = []string{in}, filepath.Join(t.TempDir(), "tokens"), tokenizer, 512
	if _, err := data.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	return c.Out
}

func tokensJob(t *testing.T, dir string, vocab int, extra string) *jobspec.Job {
	t.Helper()
	j, err := jobspec.Parse("tokens.yaml", []byte(fmt.Sprintf(`name: gpt-tokens
seed: 4
model: {kind: gpt, layers: 1, heads: 2, d_model: 16, context: 16, vocab: %d}
data: {dataset: tokens, path: %s%s}
train: {epochs: 1, max_steps: 6, global_batch: 8, precision: fp32}
optimizer: {kind: adamw, lr: 0.01}
`, vocab, dir, extra)))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// A GPT trains from prepared GPT-2 token shards: the loss starts near
// ln(50257) and falls; the shards' tokenizer must be data.tokenizer's, and
// model.vocab must cover the shards' vocab.
func TestGPTTrainsOnTokenShards(t *testing.T) {
	dir := tokensDir(t, "gpt2")
	job := tokensJob(t, dir, 50257, ", tokenizer: gpt2")
	split, err := OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	if split.Text == nil || split.Text.Tokenizer != "gpt2" || split.Text.Vocab != 50257 {
		t.Fatalf("split: %+v", split.Text)
	}
	dev, err := cpu.New(cpu.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(job, dev, split, nil)
	if err != nil {
		t.Fatal(err)
	}
	var losses []float64
	for range 6 {
		losses = append(losses, tr.Step())
	}
	t.Logf("loss %.3f → %.3f", losses[0], losses[5])
	if math.Abs(losses[0]-math.Log(50257)) > 1 || !(losses[5] < losses[0]) {
		t.Fatalf("losses %v", losses)
	}

	if _, err := OpenData(tokensJob(t, dir, 50257, ", tokenizer: byte")); err == nil ||
		!strings.Contains(err.Error(), "shards in "+dir+" were made with tokenizer gpt2 (vocab 50257), the job asks for byte") {
		t.Fatalf("data.tokenizer byte on gpt2 shards: %v", err)
	}
	small := tokensJob(t, dir, 256, "")
	split, err = OpenData(small)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewTrainer(small, dev, split, nil); err == nil || !strings.Contains(err.Error(), "model.vocab 256 is smaller than the 50257") {
		t.Fatalf("vocab 256 on gpt2 shards: %v", err)
	}
	// Byte shards train a vocab-256 model.
	bj := tokensJob(t, tokensDir(t, "byte"), 256, ", tokenizer: byte")
	split, err = OpenData(bj)
	if err != nil || split.Text.Tokenizer != "byte" {
		t.Fatalf("byte shards: %v", err)
	}
	if tr, err = NewTrainer(bj, dev, split, nil); err != nil {
		t.Fatal(err)
	}
	if l := tr.Step(); math.IsNaN(l) || math.Abs(l-math.Log(256)) > 1 {
		t.Fatalf("byte shards: loss %g", l)
	}
}
