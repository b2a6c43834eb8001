package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A short run's checkpoints are listed, and eval reports the accuracy of
// one, with the model from the config or from the tensor shapes.
func TestCheckpointsListAndEval(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	job := writeJob(t, `name: evaljob
model: {kind: mlp, layers: [784, 32, 10]}
train: {epochs: 1, global_batch: 200}
checkpoint: {dir: `+dir+`, every_steps: 10, keep: 2}
`)
	if out, err := runLoom(t, "launch", job, "--quiet", "--max-steps", "30"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := runLoom(t, "checkpoints", "list", "evaljob", "--dir", dir)
	if err != nil || !strings.Contains(out, "step-00000030") || !strings.Contains(out, "step-00000020") || strings.Contains(out, "step-00000010") {
		t.Fatalf("list (keep 2 of 10, 20, 30): %v\n%s", err, out)
	}
	ck := filepath.Join(dir, "evaljob", "step-00000030")
	for _, args := range [][]string{{"eval", ck, "--json"}, {"eval", ck, "--json", "--config", job}} {
		out, err := runLoom(t, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		var r struct {
			Step         int     `json:"step"`
			TestAccuracy float64 `json:"test_accuracy"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil || r.Step != 30 || r.TestAccuracy < 0.7 {
			t.Fatalf("%v: %+v (%v)\n%s", args, r, err, out)
		}
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
