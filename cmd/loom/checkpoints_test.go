package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A short run's checkpoints are listed, and eval reports the test accuracy
// the run itself ended with, from the config the checkpoint stores or from
// the one given: a GELU MLP trained with SGD past its first epoch (eval
// reads the weights alone, with the stored activation).
func TestCheckpointsListAndEval(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	job := writeJob(t, `name: evaljob
model: {kind: mlp, layers: [784, 32, 10], activation: gelu}
train: {epochs: 2, global_batch: 2000}
optimizer: {kind: sgd, lr: 0.1}
checkpoint: {dir: `+dir+`, every_steps: 10, keep: 2}
`)
	s := summaryOf(t, 2*time.Minute, "launch", job, "--max-steps", "40")
	out, err := runLoom(t, "checkpoints", "list", "evaljob", "--dir", dir)
	if err != nil || !strings.Contains(out, "step-00000040") || !strings.Contains(out, "step-00000030") || strings.Contains(out, "step-00000020") {
		t.Fatalf("list (keep 2 of 10, 20, 30, 40): %v\n%s", err, out)
	}
	ck := filepath.Join(dir, "evaljob", "step-00000040")
	for _, args := range [][]string{{"eval", ck, "--json"}, {"eval", ck, "--json", "--config", job}} {
		out, err := runLoom(t, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		var r struct {
			Step         int     `json:"step"`
			TestAccuracy float64 `json:"test_accuracy"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil || r.Step != 40 || r.TestAccuracy != s.TestAccuracy || r.TestAccuracy < 0.7 {
			t.Fatalf("%v: %+v (%v), the run ended at test accuracy %g\n%s", args, r, err, s.TestAccuracy, out)
		}
	}
	relu := writeJob(t, strings.Replace(mustRead(t, job), "activation: gelu", "activation: relu", 1))
	if out, err := runLoom(t, "eval", ck, "--config", relu); err == nil || !strings.Contains(err.Error(), "differs from the checkpoint's") {
		t.Fatalf("eval with another activation: %v\n%s", err, out)
	}
	missing := filepath.Join(t.TempDir(), "typo")
	if _, err := runLoom(t, "checkpoints", "list", "evaljob", "--dir", missing); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing --dir: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("listing a missing directory created it")
	}
	if _, err := runLoom(t, "eval", filepath.Join(missing, "x", "step-00000001")); err == nil {
		t.Fatal("eval of a missing checkpoint succeeded")
	}
}

// loom eval of a GPT checkpoint reports the loss per token over the
// validation windows (the launch's own final evaluation, read back from the
// checkpoint's tensors) and its perplexity, with or without --config; a
// config of another model is refused, naming both.
func TestEvalGPTCheckpoint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	// Ten documents, one held out: fewer validation windows than the
	// launch's bounded evaluation reads, so both see all of them.
	text := t.TempDir()
	for i := range 10 {
		doc := strings.Repeat(fmt.Sprintf("document %d: the quick brown fox jumps over the lazy dog.\n", i), 40)
		if err := os.WriteFile(filepath.Join(text, fmt.Sprintf("doc%d.txt", i)), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	job := writeJob(t, strings.Replace(fmt.Sprintf(gptJobYAML, "gpteval", dir), "/usr/share/common-licenses", text, 1))
	s := summaryOf(t, 2*time.Minute, "launch", job, "--max-steps", "20", "--device", "cpu:threads=1")
	ck := filepath.Join(dir, "gpteval", "step-00000020")
	out, err := runLoom(t, "eval", ck, "--config", job, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var r struct {
		Step       int     `json:"step"`
		Loss       float64 `json:"validation_loss"`
		Perplexity float64 `json:"perplexity"`
		Accuracy   float64 `json:"next_token_accuracy"`
		Windows    int     `json:"validation_windows"`
		Tokens     int     `json:"validation_tokens"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.Step != 20 || r.Windows < 1 || r.Tokens != 32*r.Windows || math.Abs(r.Loss-s.TestLoss) > 1e-6*s.TestLoss ||
		math.Abs(r.Perplexity-math.Exp(s.TestLoss)) > 1e-4*r.Perplexity || r.Accuracy != s.TestAccuracy {
		t.Fatalf("eval %s\nlaunch summary: loss %g accuracy %g", out, s.TestLoss, s.TestAccuracy)
	}
	// The checkpoint's own config gives the same figures (all but the
	// evaluation's speed).
	alone, err := runLoom(t, "eval", ck, "--json")
	speed := regexp.MustCompile(`"tokens_per_s":[0-9.e+-]+`)
	if err != nil || speed.ReplaceAllString(alone, "") != speed.ReplaceAllString(out, "") || !speed.MatchString(out) {
		t.Fatalf("eval without --config: %v\n%s\nwith it:\n%s", err, alone, out)
	}
	// --max-tokens reads that many tokens' worth of windows.
	some, err := runLoom(t, "eval", ck, "--max-tokens", "64", "--json")
	if err != nil || !strings.Contains(some, `"validation_windows":2}`) || !strings.Contains(some, `"validation_tokens":64,`) {
		t.Fatalf("eval --max-tokens 64: %v\n%s", err, some)
	}
	other := writeJob(t, strings.Replace(mustRead(t, job), "heads: 2", "heads: 4", 1))
	if out, err := runLoom(t, "eval", ck, "--config", other); err == nil || !strings.Contains(err.Error(), "heads: 4") {
		t.Fatalf("eval with 4 heads of a 2-head checkpoint: %v\n%s", err, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
