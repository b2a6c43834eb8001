package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/train"
)

func writeJob(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLaunchJSONSummary(t *testing.T) {
	p := writeJob(t, `name: cli
model: {kind: mlp, layers: [784, 32, 10]}
train: {epochs: 1, global_batch: 200, precision: bf16}
checkpoint: {dir: `+t.TempDir()+`}
`)
	out, err := runLoom(t, "launch", p, "--json", "--quiet", "--max-steps", "40")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &s); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out)
	}
	for _, k := range []string{"final_loss", "test_accuracy", "steps", "samples_per_s", "wall_s"} {
		if _, ok := s[k]; !ok {
			t.Errorf("summary lacks %q: %s", k, out)
		}
	}
	if s["steps"].(float64) != 40 || s["test_accuracy"].(float64) < 0.7 || s["precision"] != "bf16" {
		t.Errorf("unexpected summary %s", out)
	}
}

// The summary of a launch with workers shows how each batch was split:
// per stage when the plan is a pipeline.
func TestSummaryShowsShares(t *testing.T) {
	for _, tc := range []struct {
		shares []train.RankShare
		want   string
	}{
		{[]train.RankShare{{Worker: "w0", Samples: 689}, {Worker: "w1", Samples: 335}},
			"batch shares   w0 689 (67.3%), w1 335 (32.7%)\n"},
		{[]train.RankShare{{Worker: "a", Samples: 64}, {Worker: "b", Stage: 1, Samples: 64}},
			"batch shares   stage 0: a 64 (100.0%); stage 1: b 64 (100.0%)\n"},
		{[]train.RankShare{{Worker: "solo", Samples: 64}}, ""},
	} {
		var b strings.Builder
		printSummary(&b, &train.Summary{Shares: tc.shares})
		got := ""
		for _, l := range strings.SplitAfter(b.String(), "\n") {
			if strings.HasPrefix(l, "batch shares") {
				got = l
			}
		}
		if got != tc.want {
			t.Errorf("shares %+v: got line %q, want %q\n%s", tc.shares, got, tc.want, b.String())
		}
	}
}

func TestLaunchRejectsBadConfigBeforeTraining(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", "name: x\ntrain:\n  epochs: 1\n  learning_rate: 3\n", ":4: train.learning_rate: unknown field"},
		{"wrong type", "name: x\ntrain:\n  global_batch: big\n", ":3: train.global_batch: want an integer"},
		{"missing dataset", "name: x\nmodel: {layers: [784, 10]}\ndata:\n  dataset: idx\n  path: /no/such/dir\n", ":5: data.path: /no/such/dir does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeJob(t, tc.body)
			_, err := runLoom(t, "launch", p)
			if err == nil || !strings.Contains(err.Error(), p+tc.want) {
				t.Fatalf("got %v, want %q", err, p+tc.want)
			}
		})
	}
	if _, err := runLoom(t, "launch", "/no/such/job.yaml"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := runLoom(t, "launch", "../../examples/mnist-mlp.yaml", "--workers", "2", "--coordinator", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "--workers starts local workers") {
		t.Fatalf("--workers with --coordinator: %v", err)
	}
	if _, err := runLoom(t, "launch", "../../examples/mnist-mlp.yaml", "--device", "tpu"); err == nil || !strings.Contains(err.Error(), `unknown device "tpu"`) {
		t.Fatalf("bad device: %v", err)
	}
	if _, err := runLoom(t, "launch", "../../examples/mnist-mlp.yaml", "--global-batch", "0"); err == nil || !strings.Contains(err.Error(), "--global-batch 0: must be > 0") {
		t.Fatalf("--global-batch 0: %v", err)
	}
	for _, args := range [][]string{
		{"--overwrite", "--resume", "latest"},
		{"--overwrite", "--coordinator", "127.0.0.1:1"},
	} {
		if _, err := runLoom(t, append([]string{"launch", "../../examples/mnist-mlp.yaml"}, args...)...); err == nil || !strings.Contains(err.Error(), "--overwrite") {
			t.Fatalf("%v: %v", args, err)
		}
	}
	big := writeJob(t, "name: big\nmodel: {kind: mlp, layers: [784, 16, 10]}\ntrain: {epochs: 1, global_batch: 60001}\ncheckpoint: {disabled: true}\n")
	if _, err := runLoom(t, "launch", big); err == nil || !strings.Contains(err.Error(), "train.global_batch 60001 is larger than the training set (60000 examples") {
		t.Fatalf("a global batch beyond the training set: %v", err)
	}
}

// A GPT config that cannot train is refused before any step, with what is
// wrong and where.
func TestLaunchRejectsBadGPTConfig(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	small := filepath.Join(dir, "small.txt")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(small, []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gpt := func(model, path string) string {
		return "name: g\nmodel: {kind: gpt, " + model + "}\ndata: {dataset: text, path: " + path + "}\ntrain: {global_batch: 4}\ncheckpoint: {disabled: true}\n"
	}
	const ok = "layers: 1, heads: 2, d_model: 16, context: 8, vocab: 256"
	for _, tc := range []struct{ name, body, want string }{
		{"heads", gpt("layers: 1, heads: 3, d_model: 16, context: 8, vocab: 256", "/usr/share/common-licenses"), ":2: model.heads: 3 does not divide model.d_model 16"},
		{"vocab", gpt("layers: 1, heads: 2, d_model: 16, context: 8, vocab: 100", "/usr/share/common-licenses"), "model.vocab: dataset text is byte-level and needs vocab >= 256, got 100"},
		{"unknown field", gpt(ok+", colour: red", "/usr/share/common-licenses"), ":2: model.colour: unknown field"},
		{"no files", gpt(ok, empty), "no readable text files under " + empty},
		{"short text", gpt(ok, small), "context 8 needs at least 9 tokens"},
		{"too large", gpt("layers: 48, heads: 4, d_model: 65536, context: 8, vocab: 256", "/usr/share/common-licenses"), "model too large for this worker: it needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runLoom(t, "launch", writeJob(t, tc.body), "--max-steps", "1")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// Every example loads and validates. They run from a copy of examples/
// beside a freshly prepared datasets/gosrc (a small stand-in for the one
// `make demo-gpt` prepares), since examples name their data by a path
// relative to the config.
func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*.yaml")
	if len(files) < 2 {
		t.Fatalf("examples missing: %v", files)
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runLoomSplit(t, "data", "prepare", goCorpus(t, 20), "--out", filepath.Join(root, "datasets", "gosrc")); err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		files[i] = filepath.Join(root, "examples", filepath.Base(f))
		if err := os.WriteFile(files[i], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		if _, err := runLoom(t, "launch", f, "--max-steps", "-1"); err == nil || !strings.Contains(err.Error(), "--max-steps -1") {
			t.Errorf("%s: config should load and stop at the flag check, got %v", f, err)
		}
	}
}

// A job's checkpoint directory belongs to one run at a time: a fresh launch
// refuses to replace an earlier run's checkpoints unless --overwrite (which
// deletes them), --resume continues them, and a launch while another
// process holds the directory is refused, naming the holder. The summary
// names the final checkpoint.
func TestLaunchClaimsItsCheckpoints(t *testing.T) {
	ck := t.TempDir()
	p := writeJob(t, `name: claim
model: {kind: mlp, layers: [784, 16, 10]}
train: {epochs: 1, global_batch: 200}
checkpoint: {dir: `+ck+`}
`)
	out, err := runLoom(t, "launch", p, "--quiet", "--max-steps", "5")
	if err != nil || !strings.Contains(out, filepath.Join(ck, "claim", "step-00000005")) {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	out, err = runLoom(t, "launch", p, "--quiet", "--max-steps", "5")
	if err == nil || !strings.Contains(err.Error(), "holds 1 checkpoint(s) of an earlier run") || !strings.Contains(err.Error(), "--resume latest") {
		t.Fatalf("a re-run over an earlier run's checkpoints: %v\n%s", err, out)
	}
	if out, err := runLoom(t, "launch", p, "--quiet", "--max-steps", "3", "--overwrite"); err != nil {
		t.Fatalf("--overwrite: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(ck, "claim", "step-00000005")); !os.IsNotExist(err) {
		t.Fatalf("--overwrite kept the earlier run's step 5: %v", err)
	}
	if out, err := runLoom(t, "launch", p, "--quiet", "--max-steps", "6", "--resume", "latest"); err != nil || !strings.Contains(out, "step-00000006") {
		t.Fatalf("--resume latest: %v\n%s", err, out)
	}
	if out, err := runLoom(t, "launch", p, "--quiet", "--max-steps", "6", "--resume", "latest"); err == nil || !strings.Contains(err.Error(), "nothing left to train") {
		t.Fatalf("--resume latest of a finished job: %v\n%s", err, out)
	}

	unlock, err := checkpoint.LockJob(ck, "claim", "another run (test)")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	_, err = runLoom(t, "launch", p, "--quiet", "--max-steps", "7", "--resume", "latest")
	if !errors.Is(err, checkpoint.ErrLocked) || !strings.Contains(err.Error(), "another run (test)") {
		t.Fatalf("launch while another run holds the directory: %v", err)
	}
}
