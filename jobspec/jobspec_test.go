package jobspec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `name: t
seed: 3
model:
  kind: mlp
  layers: [784, 64, 10]
train:
  epochs: 2
  global_batch: 128
  precision: bf16
optimizer:
  kind: sgd
  lr: 0.01
`

func TestParseGoodAppliesDefaults(t *testing.T) {
	j, err := Parse("job.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if j.Seed != 3 || j.Train.GlobalBatch != 128 || j.DType().String() != "bf16" || j.Optimizer.Momentum != 0.9 || j.Model.Activation != "relu" || j.Data.Dataset != "mnist" {
		t.Fatalf("unexpected job %+v", j)
	}
	if got := j.TotalSteps(1000); got != 16 {
		t.Fatalf("TotalSteps = %d, want 16", got)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		line       int
		field      string
		msg        string
	}{
		{"unknown key", strings.Replace(good, "  epochs: 2", "  epochs: 2\n  epocs: 3", 1), 8, "train.epocs", "unknown field"},
		{"unknown top key", good + "extra: 1\n", 13, "extra", "unknown field"},
		{"wrong type int", strings.Replace(good, "global_batch: 128", "global_batch: lots", 1), 8, "train.global_batch", "want an integer"},
		{"wrong type list", strings.Replace(good, "[784, 64, 10]", "784", 1), 5, "model.layers", "want a list"},
		{"wrong type in list", strings.Replace(good, "[784, 64, 10]", "[784, x, 10]", 1), 5, "model.layers[1]", "want an integer"},
		{"negative seed", strings.Replace(good, "seed: 3", "seed: -3", 1), 2, "seed", "non-negative"},
		{"bad precision", strings.Replace(good, "bf16", "fp8", 1), 9, "train.precision", "unknown dtype"},
		{"bad lr", strings.Replace(good, "lr: 0.01", "lr: 0", 1), 12, "optimizer.lr", "must be in"},
		{"missing dataset path", good + "data:\n  dataset: idx\n  path: /nonexistent/fashion\n", 15, "data.path", "does not exist"},
		{"idx without path", good + "data:\n  dataset: idx\n", 13, "data.path", "required"},
		{"micro batches above the batch", strings.Replace(good, "global_batch: 128", "global_batch: 128\n  micro_batches: 129", 1), 9, "train.micro_batches", "must be in [1, global_batch 128]"},
		{"negative clip norm", good + "  clip_norm: -1\n", 13, "optimizer.clip_norm", ">= 0"},
		{"mapping expected", strings.Replace(good, "train:\n", "train: 3\nx:\n", 1), 6, "train", "want a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "job.yaml")
			os.WriteFile(path, []byte(tc.yaml), 0o644)
			_, err := Load(path)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want *Error, got %v", err)
			}
			if e.File != path || e.Line != tc.line || e.Field != tc.field || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("got %q (line %d field %q), want line %d field %q msg ~%q", err, e.Line, e.Field, tc.line, tc.field, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), path+":") {
				t.Fatalf("message %q does not start with the file", err)
			}
		})
	}
}

func TestSyntaxErrorAndEmpty(t *testing.T) {
	if _, err := Parse("j.yaml", []byte("name: [unclosed\n")); err == nil || !strings.Contains(err.Error(), "j.yaml") {
		t.Fatalf("syntax error: %v", err)
	}
	if _, err := Parse("j.yaml", nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty: %v", err)
	}
}

func TestDataPathRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	ds := filepath.Join(dir, "ds")
	os.Mkdir(ds, 0o755)
	for _, f := range []string{"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"} {
		os.WriteFile(filepath.Join(ds, f), nil, 0o644)
	}
	path := filepath.Join(dir, "job.yaml")
	os.WriteFile(path, []byte(good+"data:\n  dataset: idx\n  path: ds\n"), 0o644)
	j, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if j.DataPath() != ds {
		t.Fatalf("DataPath = %s, want %s", j.DataPath(), ds)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	j, err := Parse("job.yaml", []byte(good+"cluster: {min_workers: 2, max_workers: 4, compress: bf16, balance: equal}\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := j.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	k, err := Parse("again.yaml", b)
	if err != nil {
		t.Fatalf("marshalled job does not parse: %v\n%s", err, b)
	}
	if k.Cluster != j.Cluster || k.Train != j.Train || k.Optimizer != j.Optimizer || k.Seed != j.Seed {
		t.Fatalf("round trip changed the job:\n%+v\n%+v", j, k)
	}
	if _, err := Parse("j.yaml", []byte(good+"cluster: {min_workers: 3, max_workers: 2}\n")); err == nil || !strings.Contains(err.Error(), "cluster.max_workers") {
		t.Fatalf("max below min: %v", err)
	}
	if _, err := Parse("j.yaml", []byte(good+"cluster: {balance: fastest}\n")); err == nil || !strings.Contains(err.Error(), "cluster.balance") {
		t.Fatalf("unknown balance: %v", err)
	}
}

// SamplesIn counts the short last step of each epoch, as the sampler does.
func TestSamplesIn(t *testing.T) {
	j := &Job{Train: Train{GlobalBatch: 256}}
	for _, c := range []struct {
		steps, n int
		want     int64
	}{
		{234, 60000, 59904}, {235, 60000, 60000}, {236, 60000, 60256}, {470, 60000, 120000}, {3, 0, 768},
	} {
		if got := j.SamplesIn(c.steps, c.n); got != c.want {
			t.Errorf("SamplesIn(%d, %d) = %d, want %d", c.steps, c.n, got, c.want)
		}
	}
}
