//go:build integ

package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/data"
)

// The language-model workflow on the Go-source corpus, scaled down to test
// time: `loom data prepare` GPT-2 tokens of a package of the Go standard
// library, a GPT on them trained by 2 worker processes, SIGKILLed after a
// checkpoint, resumed on 3: it completes, its loss falls from ln 50257 =
// 10.8, every context window of the interrupted epoch is used exactly once,
// and loom generate samples from the final checkpoint.
func TestGoSourceGPTKilledOnTwoResumesOnThree(t *testing.T) {
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokens, ckpt := filepath.Join(dir, "tokens"), filepath.Join(dir, "ckpt")
	src := filepath.Join(strings.TrimSpace(string(goroot)), "src", "strings")
	if out, err := runLoom(t, "data", "prepare", src, "--include", "*.go", "--out", tokens); err != nil {
		t.Fatalf("data prepare: %v\n%s", err, out)
	}
	job := writeJob(t, fmt.Sprintf(`name: gosrc
seed: 11
model: {kind: gpt, layers: 1, heads: 2, d_model: 32, context: 64, vocab: 50257}
data: {dataset: tokens, path: %s, tokenizer: gpt2}
train: {epochs: 1, global_batch: 12, log_every: 10}
optimizer: {kind: adamw, lr: 0.01}
checkpoint: {dir: %s, every_steps: 10, keep: 0}
`, tokens, ckpt))
	s, entries := killResumeOnThree(t, dir, ckpt, job, "gosrc")
	if !(s.FinalLoss < 8) {
		t.Fatalf("resumed summary %+v (GPT-2 BPE loss starts at ln 50257 = 10.8)", s)
	}
	split, err := data.LoadTokens(tokens, 64)
	if err != nil {
		t.Fatal(err)
	}
	assertExactlyOnceOf(t, entries, split.Train.N, 60, 12, 11)
	out, err := runLoom(t, "generate", filepath.Join(ckpt, "gosrc", "step-00000060"), "--prompt", "func Index(s, substr string) int {", "--max-tokens", "20", "--json")
	if err != nil || !strings.Contains(out, `"stop":`) {
		t.Fatalf("generate: %v\n%s", err, out)
	}
}
