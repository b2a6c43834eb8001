package train

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
)

// savedGPT trains job a few steps, checkpoints it and returns the trainer
// and the checkpoint directory.
func savedGPT(t *testing.T, job *jobspec.Job, steps int) (*Trainer, string) {
	t.Helper()
	job.Checkpoint = jobspec.Checkpoint{Dir: t.TempDir()}
	tr := gptTrainer(t, job)
	for range steps {
		tr.Step()
	}
	ck, err := NewCheckpointer(job, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ck.Begin(context.Background(), tr, 1); err != nil {
		t.Fatal(err)
	}
	if err := ck.Close(); err != nil {
		t.Fatal(err)
	}
	return tr, filepath.Join(job.Checkpoint.Dir, checkpoint.StepDir(job.Name, steps))
}

// A GPT checkpoint is a Hugging Face GPT-2 directory: config.json in the
// form GPT2LMHeadModel reads, model.safetensors with transformer.* names and
// Conv1D [in, out] shapes; it loads back by name, starts a fine-tuning job
// with exactly its weights, and a Hugging Face directory without loom's
// manifest (names without the transformer. prefix, as the Hub's GPT-2 has
// them) loads too.
func TestGPTCheckpointIsHuggingFaceDir(t *testing.T) {
	job := gptJob(t, 10)
	tr, dir := savedGPT(t, job, 3)
	raw, err := os.ReadFile(filepath.Join(dir, HFConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	var hf map[string]any
	if err := json.Unmarshal(raw, &hf); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"model_type": "gpt2", "n_embd": 32.0, "n_head": 2.0, "n_layer": 2.0, "n_positions": 16.0,
		"vocab_size": 256.0, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": true, "loom_tokenizer": "byte"} {
		if hf[k] != want {
			t.Errorf("config.json %s = %v, want %v", k, hf[k], want)
		}
	}
	if a, _ := hf["architectures"].([]any); len(a) != 1 || a[0] != "GPT2LMHeadModel" {
		t.Errorf("config.json architectures %v", hf["architectures"])
	}
	ts, meta, err := checkpoint.ReadSafetensors(filepath.Join(dir, checkpoint.ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	if meta["format"] != "pt" {
		t.Errorf("safetensors metadata %v lacks format pt (transformers refuses such files)", meta)
	}
	shapes := map[string][]int{}
	for _, x := range ts {
		shapes[x.Name] = x.Shape
	}
	for name, want := range map[string][]int{
		"transformer.wte.weight": {256, 32}, "transformer.wpe.weight": {16, 32},
		"transformer.h.1.attn.c_attn.weight": {32, 96}, "transformer.h.1.attn.c_proj.weight": {32, 32},
		"transformer.h.0.mlp.c_fc.weight": {32, 128}, "transformer.h.0.mlp.c_proj.weight": {128, 32},
		"transformer.ln_f.bias": {32},
	} {
		if !slices.Equal(shapes[name], want) {
			t.Errorf("%s: shape %v, want %v", name, shapes[name], want)
		}
	}
	w, err := LoadGPTDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if w.Step != 3 || w.Tokenizer != "byte" || w.Config.Layers != 2 || !w.Config.TieEmbeddings {
		t.Fatalf("loaded %+v", w.Config)
	}
	for _, p := range tr.Params() {
		if !slices.Equal(w.Tensors[p.Name], p.Value) {
			t.Fatalf("%s differs after the round trip", p.Name)
		}
	}

	// Fine-tuning: model.init starts from the checkpoint's weights.
	ft := gptJob(t, 10)
	ft.Model.Init = dir
	ftr := gptTrainer(t, ft)
	if !slices.Equal(flatParams(ftr), flatParams(tr)) {
		t.Fatal("model.init did not start from the checkpoint's weights")
	}

	// A bare Hugging Face directory, names as on the Hub.
	hfDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hfDir, HFConfigFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var bare []checkpoint.Tensor
	for _, x := range ts {
		x.Name = strings.TrimPrefix(x.Name, "transformer.")
		bare = append(bare, x)
	}
	bare = append(bare, checkpoint.Tensor{Name: "h.0.attn.bias", Shape: []int{1}, Data: []float32{1}}) // a mask buffer: ignored
	writeSafetensors(t, filepath.Join(hfDir, checkpoint.ModelFile), bare)
	hw, err := LoadGPTDir(context.Background(), hfDir)
	if err != nil {
		t.Fatal(err)
	}
	if hw.Step != -1 || !slices.Equal(hw.Tensors["transformer.h.1.mlp.c_fc.weight"], w.Tensors["transformer.h.1.mlp.c_fc.weight"]) {
		t.Fatal("the Hugging Face directory did not load by name")
	}
}

// writeSafetensors writes ts as a plain safetensors file (through a
// checkpoint, whose model file is one).
func writeSafetensors(t *testing.T, path string, ts []checkpoint.Tensor) {
	t.Helper()
	store := checkpoint.NewMemStorage()
	w, err := checkpoint.NewWriter(store, checkpoint.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Save(context.Background(), &checkpoint.State{Job: "x", Step: 1, Params: ts, Scaler: checkpoint.ScalerState{Scale: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rc, _, err := store.Open(context.Background(), "x/step-00000001/"+checkpoint.ModelFile)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
}

// Bad directories are refused naming what is wrong.
func TestLoadGPTDirErrors(t *testing.T) {
	_, dir := savedGPT(t, gptJob(t, 10), 1)
	raw, err := os.ReadFile(filepath.Join(dir, HFConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	ts, _, err := checkpoint.ReadSafetensors(filepath.Join(dir, checkpoint.ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	hfDir := func(config []byte, ts []checkpoint.Tensor) string {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, HFConfigFile), config, 0o644); err != nil {
			t.Fatal(err)
		}
		if ts != nil {
			writeSafetensors(t, filepath.Join(d, checkpoint.ModelFile), ts)
		}
		return d
	}
	wrongShape := slices.Clone(ts)
	for i, x := range wrongShape {
		if x.Name == "transformer.h.1.attn.c_proj.weight" {
			wrongShape[i] = checkpoint.Tensor{Name: x.Name, Shape: []int{16, 64}, Data: x.Data}
		}
	}
	missing := slices.DeleteFunc(slices.Clone(ts), func(x checkpoint.Tensor) bool { return x.Name == "transformer.h.0.ln_2.bias" })
	edit := func(key string, v any) []byte {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		m[key] = v
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	relu, eps := edit("activation_function", "relu"), edit("layer_norm_epsilon", 1e-6)
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, dir, want string
	}{
		{"shape", hfDir(raw, wrongShape), "tensor transformer.h.1.attn.c_proj.weight has shape [16 64], config.json implies [32 32]"},
		{"missing", hfDir(raw, missing), "tensor transformer.h.0.ln_2.bias is missing"},
		{"activation", hfDir(relu, ts), `activation_function: "relu"`},
		{"eps", hfDir(eps, ts), "layer_norm_epsilon: 1e-06"},
		{"no weights", hfDir(raw, nil), "model.safetensors"},
		{"empty", t.TempDir(), "neither a loom manifest.json nor a Hugging Face config.json"},
		{"file", notADir, "not a directory"},
	} {
		if _, err := LoadGPTDir(context.Background(), c.dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}

	// model.init of another architecture.
	other := gptJob(t, 10)
	other.Model.DModel = 64
	other.Model.Init = dir
	split, err := OpenData(other)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := cpu.New(cpu.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewTrainer(other, dev, split, nil); err == nil || !strings.Contains(err.Error(), "another architecture") || !strings.Contains(err.Error(), "d_model 64 vs 32") {
		t.Fatalf("init of another architecture: %v", err)
	}
	if d := model.SameArchitecture(model.GPTConfig{Layers: 1}, model.GPTConfig{Layers: 1}); d != "" {
		t.Fatal(d)
	}
}
