package jobspec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tokensYAML is gptGood on a tokens directory (made in dir) with vocab
// 50257.
func tokensYAML(t *testing.T) (dir, y string) {
	t.Helper()
	dir = t.TempDir()
	os.Mkdir(filepath.Join(dir, "shards"), 0o755)
	os.WriteFile(filepath.Join(dir, "corpus.txt"), []byte("hello world\n"), 0o644)
	y = strings.Replace(gptGood, "PATH", "shards", 1)
	y = strings.Replace(y, "dataset: text", "dataset: tokens", 1)
	return dir, strings.Replace(y, "vocab: 256", "vocab: 50257", 1)
}

func TestTokensDataset(t *testing.T) {
	dir, y := tokensYAML(t)
	path := filepath.Join(dir, "job.yaml")
	os.WriteFile(path, []byte(strings.Replace(y, "  path: shards\n", "  path: shards\n  tokenizer: gpt2\n", 1)), 0o644)
	j, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if j.Data.Dataset != "tokens" || j.Data.Tokenizer != "gpt2" || j.DataPath() != filepath.Join(dir, "shards") {
		t.Fatalf("data %+v", j.Data)
	}
	b, err := j.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	k, err := Parse("marshalled.yaml", b)
	if err != nil || k.Data.Dataset != "tokens" || k.Data.Tokenizer != "gpt2" || k.DataPath() != j.DataPath() {
		t.Fatalf("marshalled: %v %+v\n%s", err, k, b)
	}
	// No tokenizer: nothing new in what a job marshals to.
	j.Data.Tokenizer = ""
	if b, _ := j.Marshal(); strings.Contains(string(b), "tokenizer") {
		t.Errorf("an unset data.tokenizer is marshalled:\n%s", b)
	}
	// A byte-level text job may say so.
	_, ty := gptYAML(t)
	os.WriteFile(filepath.Join(dir, "corpus.txt"), []byte("hello\n"), 0o644)
	os.WriteFile(path, []byte(strings.Replace(ty, "  path: corpus.txt\n", "  path: corpus.txt\n  tokenizer: byte\n", 1)), 0o644)
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
}

func TestTokensDatasetErrors(t *testing.T) {
	dir, y := tokensYAML(t)
	rep := func(y, old, new string) string {
		if !strings.Contains(y, old) {
			t.Fatalf("%q not in config", old)
		}
		return strings.Replace(y, old, new, 1)
	}
	_, text := gptYAML(t)
	for _, tc := range []struct {
		name, yaml string
		line       int
		field      string
		msg        string
	}{
		{"tokens without path", rep(y, "  path: shards\n", ""), 9, "data.path", "required for dataset tokens"},
		{"tokens path missing", rep(y, "path: shards", "path: nope"), 11, "data.path", "does not exist"},
		{"tokens path a file", rep(y, "path: shards", "path: corpus.txt"), 11, "data.path", "is not a directory"},
		{"tokens on mlp", good + "data:\n  dataset: tokens\n  path: " + dir + "\n", 14, "data.dataset", "dataset tokens needs model.kind gpt"},
		{"unknown tokenizer", rep(y, "  path: shards\n", "  path: shards\n  tokenizer: gpt-2\n"), 12, "data.tokenizer", `"gpt-2" unknown (want byte or gpt2)`},
		{"tokenizer on mnist", good + "data:\n  dataset: mnist\n  tokenizer: gpt2\n", 15, "data.tokenizer", "only datasets text and tokens"},
		{"gpt2 for text", rep(text, "  path: corpus.txt\n", "  path: corpus.txt\n  tokenizer: gpt2\n"), 12, "data.tokenizer", "dataset text is byte-level (tokenizer byte), not gpt2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "job.yaml")
			os.WriteFile(path, []byte(tc.yaml), 0o644)
			checkErr(t, path, tc.yaml, tc.line, tc.field, tc.msg)
		})
	}
}
