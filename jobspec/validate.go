package jobspec

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"

	"github.com/loomtrain/loom/tensor"
)

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// Validate checks every setting and returns the first problem as *Error.
// It also checks that a dataset path given in the config exists, so a typo
// fails before any training starts.
func (j *Job) Validate() error {
	switch {
	case j.Name == "":
		return j.errf("name", "required (a short job name such as mnist-mlp)")
	case !nameRE.MatchString(j.Name):
		return j.errf("name", "%q: use letters, digits, '.', '_' or '-' (at most 63)", j.Name)
	}
	if err := j.validateModel(); err != nil {
		return err
	}
	if err := j.validateData(); err != nil {
		return err
	}
	t := j.Train
	switch {
	case t.Epochs < 1 && t.MaxSteps < 1:
		return j.errf("train.epochs", "must be >= 1 (or set train.max_steps)")
	case t.Epochs < 0:
		return j.errf("train.epochs", "must be >= 0, got %d", t.Epochs)
	case t.MaxSteps < 0:
		return j.errf("train.max_steps", "must be >= 0, got %d", t.MaxSteps)
	case t.GlobalBatch < 1 || t.GlobalBatch > 1<<20:
		return j.errf("train.global_batch", "must be in [1, 1048576], got %d", t.GlobalBatch)
	case t.EvalEvery < 0:
		return j.errf("train.eval_every", "must be >= 0, got %d", t.EvalEvery)
	case t.LogEvery < 0:
		return j.errf("train.log_every", "must be >= 0, got %d", t.LogEvery)
	case t.MicroBatches < 0 || t.MicroBatches > t.GlobalBatch:
		return j.errf("train.micro_batches", "must be in [1, global_batch %d], got %d", t.GlobalBatch, t.MicroBatches)
	}
	if _, err := tensor.ParseDType(t.Precision); err != nil {
		return j.errf("train.precision", "%v", err)
	}
	if err := j.validateOptimizer(); err != nil {
		return err
	}
	c := j.Cluster
	switch {
	case c.MinWorkers < 0:
		return j.errf("cluster.min_workers", "must be >= 0, got %d", c.MinWorkers)
	case c.MaxWorkers < 0:
		return j.errf("cluster.max_workers", "must be >= 0, got %d", c.MaxWorkers)
	case c.MaxWorkers > 0 && c.MaxWorkers < c.MinWorkers:
		return j.errf("cluster.max_workers", "%d is below min_workers %d", c.MaxWorkers, c.MinWorkers)
	case c.Compress != "none" && c.Compress != "bf16" && c.Compress != "fp16":
		return j.errf("cluster.compress", "%q unknown (want none, bf16 or fp16)", c.Compress)
	case c.Balance != "speed" && c.Balance != "equal":
		return j.errf("cluster.balance", "%q unknown (want speed or equal)", c.Balance)
	case c.PipelineStages < AutoStages:
		return j.errf("cluster.pipeline_stages", "must be a stage count or auto, got %d", c.PipelineStages)
	case c.PipelineSchedule != "" && c.PipelineSchedule != "1f1b" && c.PipelineSchedule != "gpipe":
		return j.errf("cluster.pipeline_schedule", "%q unknown (want 1f1b or gpipe)", c.PipelineSchedule)
	case c.PipelinePartition != "" && c.PipelinePartition != "measured" && c.PipelinePartition != "uniform":
		return j.errf("cluster.pipeline_partition", "%q unknown (want measured or uniform)", c.PipelinePartition)
	case c.MaxWorkers > t.GlobalBatch:
		return j.errf("cluster.max_workers", "%d workers cannot share a global batch of %d", c.MaxWorkers, t.GlobalBatch)
	}
	if err := j.validatePipeline(); err != nil {
		return err
	}
	switch k := j.Checkpoint; {
	case k.Dir == "" && !k.Disabled:
		return j.errf("checkpoint.dir", "required unless checkpoint.disabled is true")
	case k.EverySteps < 0:
		return j.errf("checkpoint.every_steps", "must be >= 0, got %d", k.EverySteps)
	case k.Keep < 0:
		return j.errf("checkpoint.keep", "must be >= 0 (0 keeps all), got %d", k.Keep)
	}
	s := j.Schedule
	switch {
	case s.Kind != "constant" && s.Kind != "cosine":
		return j.errf("schedule.kind", "%q unknown (want constant or cosine)", s.Kind)
	case s.WarmupSteps < 0:
		return j.errf("schedule.warmup_steps", "must be >= 0, got %d", s.WarmupSteps)
	case s.MinLRRatio < 0 || s.MinLRRatio > 1:
		return j.errf("schedule.min_lr_ratio", "must be in [0, 1], got %g", s.MinLRRatio)
	}
	return nil
}

func (j *Job) validateModel() error {
	switch j.Model.Kind {
	case "mlp":
		return j.validateMLP()
	case "gpt":
		return j.validateGPT()
	}
	return j.errf("model.kind", "%q unknown (want mlp or gpt)", j.Model.Kind)
}

// written reports whether the config file set field.
func (j *Job) written(field string) bool {
	_, ok := j.lines[field]
	return ok
}

func (j *Job) validateMLP() error {
	m := j.Model
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"heads", m.Heads != 0},
		{"d_model", m.DModel != 0},
		{"context", m.Context != 0},
		{"vocab", m.Vocab != 0},
		{"tie_embeddings", m.TieEmbeddings || j.written("model.tie_embeddings")},
		{"init", m.Init != ""},
	} {
		if f.set || j.written("model."+f.name) {
			return j.errf("model."+f.name, "only for model.kind gpt (this model is an mlp)")
		}
	}
	if len(m.Layers) == 1 && !j.written("model.layers[0]") && j.lines != nil {
		return j.errf("model.layers", "want a list of widths for an mlp, e.g. [784, 512, 10], got %d (a count is for model.kind gpt)", m.Layers[0])
	}
	if len(m.Layers) < 2 {
		return j.errf("model.layers", "want at least an input and an output width, e.g. [784, 512, 10]")
	}
	for i, w := range m.Layers {
		if w < 1 || w > 1<<16 {
			return j.errf(fmt.Sprintf("model.layers[%d]", i), "width %d out of range [1, 65536]", w)
		}
	}
	if m.Activation != "relu" && m.Activation != "gelu" {
		return j.errf("model.activation", "%q unknown (want relu or gelu)", m.Activation)
	}
	return nil
}

func (j *Job) validateGPT() error {
	m := j.Model
	if j.written("model.activation") {
		return j.errf("model.activation", "only for model.kind mlp (a gpt's MLP blocks use GELU)")
	}
	if j.written("model.layers[0]") || len(m.Layers) > 1 {
		return j.errf("model.layers", "for model.kind gpt, the block count (e.g. layers: 4), not a list of widths")
	}
	switch {
	case m.Layers.Count() < 1:
		return j.errf("model.layers", "must be >= 1 (the number of transformer blocks), got %d", m.Layers.Count())
	case m.Heads < 1:
		return j.errf("model.heads", "must be >= 1, got %d", m.Heads)
	case m.DModel < 1:
		return j.errf("model.d_model", "must be >= 1, got %d", m.DModel)
	case m.DModel%m.Heads != 0:
		return j.errf("model.heads", "%d does not divide model.d_model %d", m.Heads, m.DModel)
	case m.Context < 2:
		return j.errf("model.context", "must be >= 2, got %d", m.Context)
	case m.Vocab < 2:
		return j.errf("model.vocab", "must be >= 2, got %d", m.Vocab)
	}
	if p := j.InitPath(); p != "" {
		st, err := os.Stat(p)
		if err != nil {
			return j.errf("model.init", "%v", err)
		}
		if !st.IsDir() {
			return j.errf("model.init", "%s is not a directory (a loom checkpoint or a Hugging Face GPT-2 directory)", p)
		}
	}
	return nil
}

// InitPath is model.init resolved against the config file's directory when
// relative ("" when unset).
func (j *Job) InitPath() string {
	p := j.Model.Init
	if p == "" || filepath.IsAbs(p) || j.file == "" {
		return p
	}
	return filepath.Join(filepath.Dir(j.file), p)
}

func (j *Job) validateData() error {
	d := j.Data
	switch d.Dataset {
	case "mnist":
	case "idx":
		if d.Path == "" {
			return j.errf("data.path", "required for dataset idx (a directory holding train-images-idx3-ubyte[.gz] and friends)")
		}
	case "text":
		if d.Path == "" {
			return j.errf("data.path", "required for dataset text (a text file or a directory of text files)")
		}
	case "tokens":
		if d.Path == "" {
			return j.errf("data.path", "required for dataset tokens (a directory that `loom data prepare --out` wrote, or one of llm.c or nanoGPT .bin files)")
		}
	default:
		return j.errf("data.dataset", "%q unknown (want mnist, idx, text or tokens)", d.Dataset)
	}
	lm := d.Dataset == "text" || d.Dataset == "tokens"
	switch {
	case j.Model.Kind == "gpt" && !lm:
		return j.errf("data.dataset", "model.kind gpt needs dataset text or tokens, got %q", d.Dataset)
	case j.Model.Kind != "gpt" && lm:
		return j.errf("data.dataset", "dataset %s needs model.kind gpt (this model is an %s)", d.Dataset, j.Model.Kind)
	case d.Dataset == "text" && j.Model.Vocab < 256:
		return j.errf("model.vocab", "dataset text is byte-level and needs vocab >= 256, got %d", j.Model.Vocab)
	}
	switch {
	case d.Tokenizer == "":
	case !lm:
		return j.errf("data.tokenizer", "only datasets text and tokens have a tokenizer, not %s", d.Dataset)
	case d.Tokenizer != "byte" && d.Tokenizer != "gpt2":
		return j.errf("data.tokenizer", "%q unknown (want byte or gpt2)", d.Tokenizer)
	case d.Dataset == "text" && d.Tokenizer != "byte":
		return j.errf("data.tokenizer", "dataset text is byte-level (tokenizer byte), not %s: tokenise it with `loom data prepare --tokenizer %s` and use dataset tokens", d.Tokenizer, d.Tokenizer)
	}
	if d.Path == "" {
		return nil
	}
	p := j.DataPath()
	st, err := os.Stat(p)
	if err != nil && d.Dataset == "tokens" {
		return j.errf("data.path", "%s does not exist: make it with `loom data prepare INPUT... --out %s`", p, p)
	}
	if err != nil {
		return j.errf("data.path", "%s does not exist", p)
	}
	if d.Dataset == "text" {
		return nil // a file or a directory; data.LoadText reads it
	}
	if d.Dataset == "tokens" {
		if !st.IsDir() {
			return j.errf("data.path", "%s is not a directory (dataset tokens reads the directory `loom data prepare --out` wrote)", p)
		}
		return nil // data.LoadTokens checks its files
	}
	if !st.IsDir() {
		return j.errf("data.path", "%s is not a directory", p)
	}
	for _, f := range []string{"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"} {
		_, e1 := os.Stat(filepath.Join(p, f))
		_, e2 := os.Stat(filepath.Join(p, f+".gz"))
		if e1 != nil && e2 != nil {
			return j.errf("data.path", "%s has no %s[.gz]", p, f)
		}
	}
	return nil
}

// DataPath is data.path resolved against the config file's directory when
// relative ("" when unset).
func (j *Job) DataPath() string {
	p := j.Data.Path
	if p == "" || filepath.IsAbs(p) || j.file == "" {
		return p
	}
	return filepath.Join(filepath.Dir(j.file), p)
}

func (j *Job) validateOptimizer() error {
	o := j.Optimizer
	switch o.Kind {
	case "adamw", "sgd":
	default:
		return j.errf("optimizer.kind", "%q unknown (want adamw or sgd)", o.Kind)
	}
	switch {
	case !(o.LR > 0 && o.LR < 10):
		return j.errf("optimizer.lr", "must be in (0, 10), got %g", o.LR)
	case o.WeightDecay < 0 || o.WeightDecay >= 1:
		return j.errf("optimizer.weight_decay", "must be in [0, 1), got %g", o.WeightDecay)
	case o.Momentum < 0 || o.Momentum >= 1:
		return j.errf("optimizer.momentum", "must be in [0, 1), got %g", o.Momentum)
	case o.Beta1 < 0 || o.Beta1 >= 1:
		return j.errf("optimizer.beta1", "must be in [0, 1), got %g", o.Beta1)
	case o.Beta2 < 0 || o.Beta2 >= 1:
		return j.errf("optimizer.beta2", "must be in [0, 1), got %g", o.Beta2)
	case !(o.Eps > 0 && o.Eps < 1):
		return j.errf("optimizer.eps", "must be in (0, 1), got %g", o.Eps)
	case o.ClipNorm < 0 || math.IsInf(o.ClipNorm, 0) || math.IsNaN(o.ClipNorm):
		return j.errf("optimizer.clip_norm", "must be a finite number >= 0 (0: no clipping), got %g", o.ClipNorm)
	}
	return nil
}

// SamplesIn is the number of training samples the first steps consume on a
// training set of n: every epoch has ceil(n / global_batch) steps, the last
// one short. 0 for n <= 0 means unknown: steps × global_batch.
func (j *Job) SamplesIn(steps, n int) int64 {
	b := j.Train.GlobalBatch
	if n <= 0 {
		return int64(steps) * int64(b)
	}
	per := (n + b - 1) / b
	return int64(steps/per)*int64(n) + int64(min((steps%per)*b, n))
}

// TotalSteps is the number of optimizer steps the job runs for a training set
// of n examples.
func (j *Job) TotalSteps(n int) int {
	per := (n + j.Train.GlobalBatch - 1) / j.Train.GlobalBatch
	total := per * j.Train.Epochs
	if j.Train.MaxSteps > 0 && (total == 0 || j.Train.MaxSteps < total) {
		total = j.Train.MaxSteps
	}
	return total
}

// validatePipeline checks cluster.pipeline_stages against the model and
// the rest of the config.
func (j *Job) validatePipeline() error {
	c, t := j.Cluster, j.Train
	if !c.Pipelined() {
		return nil
	}
	const f = "cluster.pipeline_stages"
	switch n := int(c.PipelineStages); {
	case j.Model.Kind != "gpt":
		return j.errf(f, "pipeline stages cut a gpt's blocks; this model is an %s", j.Model.Kind)
	case n > j.Model.GPTLayers():
		return j.errf(f, "%d is more than the model's %d layers (each stage holds at least one block)", n, j.Model.GPTLayers())
	case j.Model.TieEmbeddings:
		return j.errf(f, "needs model.tie_embeddings: false (a tied embedding would live on the first and the last stage at once)")
	case j.DType() == tensor.F16:
		return j.errf(f, "train.precision fp16 cannot be pipelined (each stage would skip overflowing steps on its own); use bf16 or fp32")
	case t.MicroBatches > 0 && n > 1 && t.MicroBatches < n && c.PipelineSchedule != "gpipe":
		return j.errf("train.micro_batches", "%d is below the %d pipeline stages: 1F1B needs a micro-batch for every stage to work on at once (with fewer, stages idle most of each step); use at least %d, or cluster.pipeline_schedule: gpipe", t.MicroBatches, n, n)
	}
	return nil
}
