package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/data"
)

// loom generate samples from a GPT checkpoint: greedy decoding is
// deterministic and the KV cache gives the tokens recomputing the prefix
// gives; sampling is reproducible by --seed; the model's context stops it;
// bad input is refused with a reason.
func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	text := t.TempDir()
	for i := range 10 {
		doc := strings.Repeat(fmt.Sprintf("document %d: the quick brown fox jumps over the lazy dog.\n", i), 40)
		if err := os.WriteFile(filepath.Join(text, fmt.Sprintf("doc%d.txt", i)), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	job := writeJob(t, strings.Replace(fmt.Sprintf(gptJobYAML, "gptgen", dir), "/usr/share/common-licenses", text, 1))
	summaryOf(t, 2*time.Minute, "launch", job, "--max-steps", "30", "--device", "cpu:threads=1")
	ck := filepath.Join(dir, "gptgen", "step-00000030")

	gen := func(args ...string) generation {
		t.Helper()
		out, err := runLoom(t, append([]string{"generate", ck, "--json", "--device", "cpu:threads=1"}, args...)...)
		if err != nil {
			t.Fatalf("generate %v: %v\n%s", args, err, out)
		}
		var g generation
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &g); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return g
	}
	greedy := gen("--prompt", "the quick", "--max-tokens", "12", "--temperature", "0")
	if greedy.PromptTokens != 9 || len(greedy.Tokens) != 12 || greedy.Stop != "max_tokens" || !greedy.KVCache || greedy.Text == "" {
		t.Fatalf("greedy: %+v", greedy)
	}
	if again := gen("--prompt", "the quick", "--max-tokens", "12", "--temperature", "0", "--no-cache"); again.Text != greedy.Text || again.KVCache {
		t.Fatalf("recomputing the prefix gave %q, the KV cache %q", again.Text, greedy.Text)
	}
	a := gen("--prompt", "the", "--max-tokens", "16", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "7")
	b := gen("--prompt", "the", "--max-tokens", "16", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "7")
	if a.Text != b.Text || len(a.Tokens) != 16 {
		t.Fatalf("same seed, different samples: %q vs %q", a.Text, b.Text)
	}
	// The context is 32 tokens: a 30-token prompt leaves room for 2 more
	// positions, so the third generated token is the last one.
	long := gen("--prompt", strings.Repeat("x", 30), "--max-tokens", "10", "--temperature", "0")
	if long.Stop != "context" || len(long.Tokens) != 3 {
		t.Fatalf("at the context: %+v", long)
	}
	// Streaming (no --json) prints the same greedy text.
	out, err := runLoom(t, "generate", ck, "--prompt", "the quick", "--max-tokens", "12", "--temperature", "0", "--device", "cpu:threads=1")
	if err != nil || !strings.HasPrefix(out, greedy.Text) || !strings.Contains(out, "12 generated at") {
		t.Fatalf("streamed: %v\n%q\nwant prefix %q", err, out, greedy.Text)
	}

	mlpDir := t.TempDir()
	mlp := writeJob(t, fmt.Sprintf("name: mlpgen\nmodel: {kind: mlp, layers: [784, 16, 10]}\ntrain: {epochs: 1, global_batch: 600}\ncheckpoint: {dir: %s}\n", mlpDir))
	summaryOf(t, 2*time.Minute, "launch", mlp, "--max-steps", "2", "--device", "cpu:threads=1")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"generate", ck}, "the prompt is empty"},
		{[]string{"generate", ck, "--prompt", strings.Repeat("y", 33)}, "the prompt is 33 tokens, longer than the model's context of 32"},
		{[]string{"generate", ck, "--prompt", "a", "--top-p", "0"}, "--top-p must be in (0, 1]"},
		{[]string{"generate", ck, "--prompt", "a", "--temperature", "-1"}, "--temperature must be"},
		{[]string{"generate", ck, "--prompt", "a", "--tokenizer", "gpt2"}, "--tokenizer gpt2, but"},
		{[]string{"generate", filepath.Join(mlpDir, "mlpgen", "step-00000002"), "--prompt", "a"}, "not of a GPT"},
		{[]string{"generate", t.TempDir(), "--prompt", "a"}, "neither a loom manifest.json nor a Hugging Face config.json"},
	} {
		if out, err := runLoom(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v\n%s\nwant %q", c.args, err, out, c.want)
		}
	}
}

// The stream prints each character once it is complete and never stalls
// on bytes that cannot become one.
func TestTokenStream(t *testing.T) {
	tok, err := data.NewTokenizer(data.TokenizerByte)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	s := &tokenStream{tok: tok, out: &out, on: true}
	for i, b := range []byte("a\xc3") { // 'a', then the first byte of 'é'
		s.add(int(b))
		if want := []string{"a", "a"}[i]; out.String() != want {
			t.Fatalf("after byte %d: %q, want %q", i, out.String(), want)
		}
	}
	s.add(0xa9) // completes 'é'
	s.add(0x80) // a stray continuation byte: never valid
	s.add('b')
	if out.String() != "aé\uFFFDb" {
		t.Fatalf("streamed %q", out.String())
	}
	s.add(0xe2) // a 3-byte character begun and never finished
	s.flush()
	if out.String() != "aé\uFFFDb\uFFFD" {
		t.Fatalf("after flush %q", out.String())
	}
}
