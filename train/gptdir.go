package train

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// HFConfigFile is the Hugging Face config a GPT checkpoint carries beside
// its model.safetensors.
const HFConfigFile = "config.json"

// GPTWeights is a GPT read from a directory: a loom checkpoint (manifest,
// checksums verified) or a Hugging Face GPT-2 directory (config.json and
// model.safetensors, as transformers' save_pretrained writes them).
type GPTWeights struct {
	Dir       string
	Config    model.GPTConfig // Precision unset
	Tokenizer string          // "" when the directory does not say
	// Tensors are by loom name (Hugging Face GPT2LMHeadModel names) in
	// loom's layout, which is Hugging Face's.
	Tensors map[string][]float32
	// Step and Job are set for a loom checkpoint (Step -1 otherwise; Job
	// nil when the checkpoint stores no config).
	Step int
	Job  *jobspec.Job
}

// LoadGPTDir reads a GPT from dir, checking that every tensor the config
// implies is present with its shape (naming the first that is not).
func LoadGPTDir(ctx context.Context, dir string) (*GPTWeights, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (a loom checkpoint or a Hugging Face GPT-2 directory)", dir)
	}
	w := &GPTWeights{Dir: dir, Step: -1, Tensors: map[string][]float32{}}
	var tensors []checkpoint.Tensor
	var rawConfig []byte
	if _, err := os.Stat(filepath.Join(dir, checkpoint.ManifestFile)); err == nil {
		s, err := checkpoint.LoadDir(ctx, dir)
		if err != nil {
			return nil, err
		}
		w.Step, tensors = s.Step, s.Params
		for _, f := range s.Sidecars {
			if f.Name == HFConfigFile {
				rawConfig = f.Data
			}
		}
		if s.Config != "" {
			if w.Job, err = jobspec.Parse(filepath.Join(dir, checkpoint.ManifestFile)+" (its config)", []byte(s.Config)); err != nil {
				return nil, err
			}
			w.Job.Name = s.Job
		}
		if rawConfig == nil {
			if w.Job == nil || w.Job.Model.Kind != "gpt" {
				return nil, fmt.Errorf("%s is a loom checkpoint, but not of a GPT", dir)
			}
			return nil, fmt.Errorf("%s: a GPT checkpoint written before loom stored config.json; it cannot be loaded by name", dir)
		}
	} else {
		if rawConfig, err = os.ReadFile(filepath.Join(dir, HFConfigFile)); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s holds neither a loom manifest.json nor a Hugging Face config.json", dir)
			}
			return nil, err
		}
		path := filepath.Join(dir, checkpoint.ModelFile)
		if _, err := os.Stat(path); err != nil {
			if _, e := os.Stat(filepath.Join(dir, "pytorch_model.bin")); e == nil {
				return nil, fmt.Errorf("%s has pytorch_model.bin but no model.safetensors: loom reads safetensors (convert with safetensors.torch.save_file)", dir)
			}
			return nil, err
		}
		if tensors, _, err = checkpoint.ReadSafetensors(path); err != nil {
			return nil, err
		}
	}
	cfg, h, err := model.ParseHFConfig(rawConfig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	w.Config, w.Tokenizer = cfg, h.Tokenizer
	for _, t := range tensors {
		name, keep := hfName(t.Name)
		if keep {
			w.Tensors[name] = t.Data
		}
	}
	shapes := map[string][]int{}
	for _, t := range tensors {
		if name, keep := hfName(t.Name); keep {
			shapes[name] = t.Shape
		}
	}
	for _, p := range cfg.ParamShapes() {
		got, ok := shapes[p.Name]
		if !ok {
			return nil, fmt.Errorf("%s: tensor %s is missing (config.json: %d layers, n_embd %d, vocab %d)", dir, p.Name, cfg.Layers, cfg.DModel, cfg.Vocab)
		}
		if !p.Shape.Equal(got) {
			return nil, fmt.Errorf("%s: tensor %s has shape %v, config.json implies %v", dir, p.Name, got, []int(p.Shape))
		}
	}
	return w, nil
}

// NewGPT builds the whole model of w on be, fp32, with w's weights.
func (w *GPTWeights) NewGPT(be device.Backend) (*model.GPT, error) {
	cfg := w.Config
	cfg.Precision = tensor.F32
	g, err := model.NewGPT(be, cfg, model.StageRange{First: 0, Last: cfg.Layers}, 0)
	if err != nil {
		return nil, err
	}
	for _, p := range g.Params() {
		be.Upload(device.Whole(g.ParamBuffer()).Slice(p.Offset, p.Offset+p.N), w.Tensors[p.Name])
	}
	return g, nil
}

// hfName maps a tensor name of a Hugging Face GPT-2 file to loom's: the
// GPT2Model files on the Hub omit the "transformer." prefix, and the causal
// mask buffers (attn.bias, attn.masked_bias) are not weights.
func hfName(name string) (string, bool) {
	if strings.HasSuffix(name, ".attn.bias") || strings.HasSuffix(name, ".attn.masked_bias") {
		return "", false
	}
	if name != "lm_head.weight" && !strings.HasPrefix(name, "transformer.") {
		name = "transformer." + name
	}
	return name, true
}

// initFromDir loads the weights of job's model.init into a fresh GPT task,
// refusing a directory of another architecture.
func initFromDir(t *Trainer) error {
	w, err := LoadGPTDir(context.Background(), t.job.InitPath())
	if err != nil {
		return fmt.Errorf("model.init: %w", err)
	}
	g := t.task.(*gptTask)
	if d := model.SameArchitecture(g.net.Config(), w.Config); d != "" {
		return fmt.Errorf("model.init %s is another architecture than the job's model (%s: job vs directory)", w.Dir, d)
	}
	if w.Tokenizer != "" && w.Tokenizer != g.text.Tokenizer {
		return fmt.Errorf("model.init %s was trained on tokenizer %s, the job's data is tokenizer %s", w.Dir, w.Tokenizer, g.text.Tokenizer)
	}
	for _, p := range g.ps {
		copy(p.Value, w.Tensors[p.Name])
	}
	g.weightsChanged()
	return nil
}
