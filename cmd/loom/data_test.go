package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/jobspec"
)

// runLoomSplit executes the CLI in-process with stdout and stderr apart.
func runLoomSplit(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// goCorpus writes n Go files (and a test file and a binary one) to a
// fresh directory.
func goCorpus(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		src := fmt.Sprintf("package p\n\n// Twice%d doubles x.\nfunc Twice%d(x int) int { return 2 * x }\n", i, i)
		write(fmt.Sprintf("pkg%d/f%02d.go", i%3, i), []byte(strings.Repeat(src, 3)))
	}
	write("pkg0/f_test.go", []byte("package p\n\nfunc TestX() {}\n"))
	write("pkg1/blob.go", []byte("package p\x00\x01"))
	write("README.md", []byte("# corpus\n"))
	return dir
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

// loom data prepare: the JSON summary, the progress line when stderr is
// not a terminal, --exclude, the same bytes for any --workers, refusal to
// write into a non-empty directory without --overwrite, bad flags.
func TestDataPrepareCLI(t *testing.T) {
	in := goCorpus(t, 24)
	out := filepath.Join(t.TempDir(), "gosrc")
	stdout, stderr, err := runLoomSplit(t, "data", "prepare", in, "--include", "*.go", "--exclude", "*_test.go",
		"--out", out, "--json", "--shard-tokens", "300", "--workers", "2")
	if err != nil {
		t.Fatalf("%v\n%s%s", err, stdout, stderr)
	}
	var s struct {
		Out            string  `json:"out"`
		Tokenizer      string  `json:"tokenizer"`
		Vocab          int     `json:"vocab"`
		Documents      int     `json:"documents"`
		TrainDocuments int     `json:"train_documents"`
		ValDocuments   int     `json:"val_documents"`
		Skipped        int     `json:"skipped_files"`
		Bytes          int     `json:"bytes"`
		Tokens         int     `json:"tokens"`
		TrainTokens    int     `json:"train_tokens"`
		ValTokens      int     `json:"val_tokens"`
		TrainShards    int     `json:"train_shards"`
		TokensPerS     float64 `json:"tokens_per_s"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &s); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout)
	}
	if s.Out != out || s.Tokenizer != "gpt2" || s.Vocab != 50257 || s.Documents != 24 || s.TrainDocuments != 22 || s.ValDocuments != 2 ||
		s.Skipped != 1 || s.Tokens != s.TrainTokens+s.ValTokens || s.Tokens < s.Bytes/6 || s.TrainShards < 2 || s.TokensPerS <= 0 {
		t.Fatalf("summary %+v", s)
	}
	if !strings.Contains(stderr, "prepare: 25/25 files") {
		t.Errorf("no final progress line on stderr:\n%s", stderr)
	}
	first := readDir(t, out)

	// A second run into the same directory is refused ...
	if _, _, err := runLoomSplit(t, "data", "prepare", in, "--include", "*.go", "--out", out); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("prepare into a non-empty --out: %v", err)
	}
	// ... and with --overwrite on one worker writes the same bytes.
	stdout, stderr, err = runLoomSplit(t, "data", "prepare", in, "--include", "*.go", "--exclude", "*_test.go",
		"--out", out, "--shard-tokens", "300", "--workers", "1", "--overwrite")
	if err != nil {
		t.Fatalf("%v\n%s%s", err, stdout, stderr)
	}
	if !reflect.DeepEqual(readDir(t, out), first) {
		t.Fatal("--workers 1 wrote other bytes than --workers 2")
	}
	for _, want := range []string{"prepared " + out + " with tokenizer gpt2 (vocab 50257)", "24 (22 train, 2 val: every 10th)",
		"1 file skipped", "tokens/s", "dataset: tokens, path: " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{in, "--out", t.TempDir(), "--tokenizer", "sentencepiece"}, `tokenizer "sentencepiece" unknown (want byte or gpt2)`},
		{[]string{in, "--out", t.TempDir(), "--val-every", "1"}, "val-every must be >= 2"},
		{[]string{in}, `"out" not set`},
		{[]string{filepath.Join(in, "missing"), "--out", t.TempDir()}, "does not exist"},
	} {
		if _, _, err := runLoomSplit(t, append([]string{"data", "prepare"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// A GPT job launched on prepared GPT-2 shards trains and reports its
// validation loss.
func TestLaunchGPTOnTokens(t *testing.T) {
	in := goCorpus(t, 20)
	out := filepath.Join(t.TempDir(), "tokens")
	if o, e, err := runLoomSplit(t, "data", "prepare", in, "--include", "*.go", "--out", out); err != nil {
		t.Fatalf("%v\n%s%s", err, o, e)
	}
	job := writeJob(t, `name: gpt-tokens
model: {kind: gpt, layers: 1, heads: 2, d_model: 16, context: 16, vocab: 50257}
data: {dataset: tokens, path: `+out+`, tokenizer: gpt2}
train: {epochs: 1, global_batch: 8}
optimizer: {kind: adamw, lr: 0.01}
checkpoint: {dir: `+t.TempDir()+`}
`)
	// A cluster launch counts the training windows from the manifest alone.
	j, err := jobspec.Load(job)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := data.LoadTokens(out, 16)
	if err != nil {
		t.Fatal(err)
	}
	if n := trainSize(j); n != ts.Train.N || n < 10 {
		t.Fatalf("trainSize %d, LoadTokens has %d windows", n, ts.Train.N)
	}
	stdout, err := runLoom(t, "launch", job, "--json", "--quiet", "--max-steps", "4", "--device", "cpu:threads=1")
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &s); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout)
	}
	if s["steps"].(float64) != 4 || s["final_loss"].(float64) > 11 {
		t.Errorf("summary %s", stdout)
	}
}
