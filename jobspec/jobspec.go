// Package jobspec is the job config: the YAML a user writes, its defaults,
// and validation whose every error names the file, line and field.
//
// It sits beside the packages DESIGN.md lists because the CLI, the worker and
// the coordinator's submit path all read the same config; it imports only
// tensor and the YAML decoder.
package jobspec

import (
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/loomtrain/loom/tensor"
)

// Job is one training job as written in JOB.yaml.
type Job struct {
	Name       string     `yaml:"name"`
	Seed       uint64     `yaml:"seed"`
	Model      Model      `yaml:"model"`
	Data       Data       `yaml:"data"`
	Train      Train      `yaml:"train"`
	Optimizer  Optimizer  `yaml:"optimizer"`
	Schedule   Schedule   `yaml:"schedule"`
	Cluster    Cluster    `yaml:"cluster"`
	Checkpoint Checkpoint `yaml:"checkpoint"`

	// file and lines are filled by Load so semantic errors can point at
	// the line a field came from.
	file  string
	lines map[string]int
}

// Model describes the network.
//
// For kind mlp, layers is a list of widths and activation applies; for kind
// gpt (a pre-LN decoder-only transformer over byte-level tokens), layers is
// a block count (layers: 4) and heads, d_model, context, vocab and
// tie_embeddings apply. Fields of the other kind are rejected.
type Model struct {
	Kind       string `yaml:"kind"`       // mlp | gpt
	Layers     Layers `yaml:"layers"`     // mlp: widths, input first, classes last; gpt: block count
	Activation string `yaml:"activation"` // mlp: relu | gelu

	// gpt only.
	Heads   int `yaml:"heads"`   // attention heads; must divide d_model
	DModel  int `yaml:"d_model"` // residual width
	Context int `yaml:"context"` // tokens per sequence (window)
	Vocab   int `yaml:"vocab"`   // token ids; >= 256 for byte-level text
	// TieEmbeddings shares the token embedding with the output head.
	// Load sets it to true for gpt unless the config says otherwise; a Job
	// built in code must set it.
	TieEmbeddings bool `yaml:"tie_embeddings"`
	// Init starts training from the weights in a directory instead of a
	// random initialisation (fine-tuning): a loom GPT checkpoint or a
	// Hugging Face GPT-2 directory (config.json, model.safetensors) of the
	// same architecture. Relative to the config file.
	Init string `yaml:"init"`
}

// Layers is model.layers: a list of widths for mlp ([784, 512, 10]) or,
// written as a single integer, the block count of a gpt (layers: 4), held as
// a one-element list. Layers converts to and from []int freely.
type Layers []int

// LayerCount is the Layers of a gpt with n blocks.
func LayerCount(n int) Layers { return Layers{n} }

// Count is the block count of a gpt (layers: 4): the single value, or 0 when
// there is not exactly one.
func (l Layers) Count() int {
	if len(l) != 1 {
		return 0
	}
	return l[0]
}

// UnmarshalYAML accepts a list of integers or a single integer (the latter
// decodes to a one-element list).
func (l *Layers) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var v int
		if err := n.Decode(&v); err != nil {
			return err
		}
		*l = Layers{v}
		return nil
	}
	var v []int
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

// GPTLayers is the gpt block count (model.layers: N); 0 for other kinds.
func (m Model) GPTLayers() int {
	if m.Kind != "gpt" {
		return 0
	}
	return m.Layers.Count()
}

// MarshalYAML writes only the fields of the model's kind, so an mlp model
// marshals (and hashes) exactly as before gpt existed and a gpt model
// round-trips through Parse (layers as a count, tie_embeddings explicit).
func (m Model) MarshalYAML() (any, error) {
	if m.Kind == "gpt" {
		return struct {
			Kind          string `yaml:"kind"`
			Layers        int    `yaml:"layers"`
			Heads         int    `yaml:"heads"`
			DModel        int    `yaml:"d_model"`
			Context       int    `yaml:"context"`
			Vocab         int    `yaml:"vocab"`
			TieEmbeddings bool   `yaml:"tie_embeddings"`
			Init          string `yaml:"init,omitempty"`
		}{m.Kind, m.Layers.Count(), m.Heads, m.DModel, m.Context, m.Vocab, m.TieEmbeddings, m.Init}, nil
	}
	return struct {
		Kind       string `yaml:"kind"`
		Layers     []int  `yaml:"layers"`
		Activation string `yaml:"activation"`
	}{m.Kind, m.Layers, m.Activation}, nil
}

// Data names the dataset.
type Data struct {
	Dataset string `yaml:"dataset"` // mnist | idx | text | tokens
	// Path is a directory of IDX files (idx; optional for mnist), a text
	// file or directory of text files (text; required), or a directory of
	// token shards that `loom data prepare` wrote, or of llm.c / nanoGPT
	// .bin files (tokens; required).
	Path string `yaml:"path"`
	// Tokenizer, when set, is the tokenizer the data must have been made
	// with (byte | gpt2): shards of another are refused. Text is byte.
	Tokenizer string `yaml:"tokenizer,omitempty"`
}

// Train holds the loop settings.
type Train struct {
	Epochs      int    `yaml:"epochs"`
	MaxSteps    int    `yaml:"max_steps"`    // 0: run all epochs
	GlobalBatch int    `yaml:"global_batch"` // examples; for gpt, sequences (context windows)
	Precision   string `yaml:"precision"`    // fp32 | bf16 | fp16
	EvalEvery   int    `yaml:"eval_every"`   // steps; 0: only at the end
	LogEvery    int    `yaml:"log_every"`    // steps between plain log lines
	// MicroBatches splits each rank's part of a global batch into this
	// many forward/backward passes whose gradients are summed before the
	// update (gradient accumulation): the same step in less activation
	// memory. 0 or 1: one pass.
	MicroBatches int `yaml:"micro_batches,omitempty"`
}

// Optimizer selects and tunes the update rule.
type Optimizer struct {
	Kind        string  `yaml:"kind"` // adamw | sgd
	LR          float64 `yaml:"lr"`
	WeightDecay float64 `yaml:"weight_decay"`
	Momentum    float64 `yaml:"momentum"` // sgd
	Beta1       float64 `yaml:"beta1"`    // adamw
	Beta2       float64 `yaml:"beta2"`    // adamw
	Eps         float64 `yaml:"eps"`      // adamw
	// ClipNorm, if > 0, scales each step's gradients down so that their
	// global L2 norm (over every parameter, after the data-parallel sum) is
	// at most this, as torch.nn.utils.clip_grad_norm_ does.
	ClipNorm float64 `yaml:"clip_norm,omitempty"`
}

// Schedule shapes the learning rate over the run.
type Schedule struct {
	Kind        string  `yaml:"kind"` // constant | cosine
	WarmupSteps int     `yaml:"warmup_steps"`
	MinLRRatio  float64 `yaml:"min_lr_ratio"` // cosine floor as a fraction of lr
}

// Cluster holds the distributed settings.
type Cluster struct {
	MinWorkers int    `yaml:"min_workers"` // the job waits below this many; 0 means 1
	MaxWorkers int    `yaml:"max_workers"` // extra workers stand by; 0: no limit
	Compress   string `yaml:"compress"`    // gradient wire format: none | bf16 | fp16
	Balance    string `yaml:"balance"`     // batch shares: speed (measured) | equal
	// PipelineStages cuts a gpt into this many pipeline stages, each a
	// contiguous range of blocks on its own workers (0 or 1: data parallel
	// only), or AutoStages (written auto): the planner picks the count
	// with the best predicted step time on the workers it has.
	PipelineStages Stages `yaml:"pipeline_stages,omitempty"`
	// PipelineSchedule is 1f1b (default: one forward, one backward, at most
	// the stage count of micro-batches in flight) or gpipe (every forward,
	// then every backward).
	PipelineSchedule string `yaml:"pipeline_schedule,omitempty"`
	// PipelinePartition is how the blocks are cut into stages: measured
	// (default, also written empty: the ranges that balance the stages'
	// measured speeds) or uniform (the same number of blocks on every
	// stage, the first stages one more when they do not divide; the
	// baseline of DeepSpeed's partition_method uniform). Either way the
	// planner picks each stage's workers and their shares by speed.
	PipelinePartition string `yaml:"pipeline_partition,omitempty"`
}

// Stages is cluster.pipeline_stages: a count, or AutoStages.
type Stages int

// AutoStages is cluster.pipeline_stages: auto.
const AutoStages Stages = -1

// UnmarshalYAML accepts a count or the word auto.
func (s *Stages) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Value == "auto" {
		*s = AutoStages
		return nil
	}
	var v int
	if err := n.Decode(&v); err != nil {
		return fmt.Errorf("want a stage count or auto, got %q", n.Value)
	}
	*s = Stages(v)
	return nil
}

// MarshalYAML writes auto or the count.
func (s Stages) MarshalYAML() (any, error) {
	if s == AutoStages {
		return "auto", nil
	}
	return int(s), nil
}

// Pipelined reports whether the job is cut into pipeline stages (or may
// be: auto).
func (c Cluster) Pipelined() bool { return c.PipelineStages > 1 || c.PipelineStages == AutoStages }

// PipelineMicro is the micro-batches per step of a pipeline of stages
// stages: train.micro_batches when set, else twice the stage count (1F1B
// then idles (stages-1)/(3·stages-1) of each step), at most the global
// batch.
func (j *Job) PipelineMicro(stages int) int {
	if j.Train.MicroBatches > 0 {
		return j.Train.MicroBatches
	}
	return max(1, min(j.Train.GlobalBatch, 2*stages))
}

// Checkpoint configures checkpoints.
type Checkpoint struct {
	Dir        string `yaml:"dir"`         // root directory (relative: to the working directory)
	EverySteps int    `yaml:"every_steps"` // 0: only at the end and on clean shutdown
	Keep       int    `yaml:"keep"`        // newest checkpoints kept; 0 keeps all
	// Resume is "" (start fresh), "latest" (newest valid recorded
	// checkpoint of this job name) or a checkpoint directory. Set by
	// `loom launch --resume`.
	Resume string `yaml:"resume"`
	// Disabled turns checkpoints off entirely.
	Disabled bool `yaml:"disabled"`
}

// Default returns a job with every optional field at its default.
func Default() Job {
	return Job{
		Seed:       1,
		Model:      Model{Kind: "mlp", Activation: "relu"},
		Data:       Data{Dataset: "mnist"},
		Train:      Train{Epochs: 1, GlobalBatch: 256, Precision: "fp32", LogEvery: 50},
		Optimizer:  Optimizer{Kind: "adamw", LR: 1e-3, WeightDecay: 0.01, Momentum: 0.9, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8},
		Schedule:   Schedule{Kind: "cosine"},
		Cluster:    Cluster{Compress: "none", Balance: "speed"},
		Checkpoint: Checkpoint{Dir: "checkpoints", Keep: 3},
	}
}

// Micro is the number of micro-batches a rank splits its part of each
// global batch into (at least 1).
func (t Train) Micro() int { return max(1, t.MicroBatches) }

// DType is the compute precision as a tensor dtype (valid after Validate).
func (j *Job) DType() tensor.DType {
	d, _ := tensor.ParseDType(j.Train.Precision)
	return d
}

// File is the path the job was loaded from ("" if built in code).
func (j *Job) File() string { return j.file }

// Error is a config error located in the file.
type Error struct {
	File  string
	Line  int
	Field string // dotted path, e.g. train.precision
	Msg   string
}

func (e *Error) Error() string {
	loc := e.File
	if loc == "" {
		loc = "job config"
	}
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", loc, e.Line)
	}
	if e.Field == "" {
		return loc + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Field, e.Msg)
}

// errf builds an Error for field, located at the line the field was read from
// (or its nearest parent's).
func (j *Job) errf(field, format string, args ...any) *Error {
	line := 0
	for f := field; f != ""; {
		if l, ok := j.lines[f]; ok {
			line = l
			break
		}
		i := len(f) - 1
		for i >= 0 && f[i] != '.' {
			i--
		}
		if i < 0 {
			break
		}
		f = f[:i]
	}
	return &Error{File: j.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)}
}
