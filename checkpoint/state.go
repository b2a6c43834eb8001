package checkpoint

import (
	"fmt"
	"math"
	"time"
)

// State is everything a job needs to resume: what the Writer saves and what
// Load returns. Params and Optim hold full (unsharded) fp32 tensors, so a
// checkpoint resumes on any world size; WorldSize records the size at save.
// A shard's State (Shard.Count ≥ 2) holds only its own tensors; Load
// returns the whole checkpoint, every shard's tensors, with Shard zero.
type State struct {
	// Job names the job; it is the first path segment of the checkpoint and
	// must be a safe single segment (no '/', not starting with '.').
	Job string
	// ConfigHash identifies the job config the state was trained under.
	ConfigHash string
	// Config is the whole job config (YAML) the state was trained under,
	// so a checkpoint describes itself ("" in checkpoints written before
	// loom stored it).
	Config string
	// Step is the number of optimizer steps taken; it names the directory.
	Step int
	// Epoch is the training epoch in progress.
	Epoch int
	// SamplerEpoch and SamplerOffset are the data sampler's resumable
	// position: the epoch and the samples of it already consumed.
	SamplerEpoch, SamplerOffset int
	// WorldSize is the number of data-parallel ranks at save time.
	WorldSize int
	// Precision is the job's compute precision ("fp32", "bf16", "fp16").
	Precision string
	// RNG holds named random-generator states (seeds, counters).
	RNG map[string]uint64
	// Scaler is the dynamic loss scaler's state.
	Scaler ScalerState
	// Params are the fp32 master weights, written to model.safetensors.
	Params []Tensor
	// Optim is the optimizer state (e.g. AdamW m and v per parameter),
	// written to optimizer.safetensors.
	Optim []Tensor
	// Sidecars are small files written into the checkpoint directory
	// beside the tensors (a GPT's Hugging Face config.json), listed in
	// the manifest with their size and sha256 and verified on load. In a
	// sharded checkpoint only shard 0 carries them.
	Sidecars []Sidecar
	// Shard says which shard of a sharded checkpoint this State is; the
	// zero value is an unsharded checkpoint (see ShardID).
	Shard ShardID
}

// Sidecar is one small file of a checkpoint: a single safe path segment
// that is none of the checkpoint's own file names, and its bytes.
type Sidecar struct {
	Name string
	Data []byte
}

// maxSidecarBytes bounds one sidecar file: they are metadata, read whole.
const maxSidecarBytes = 1 << 20

// Tensor is one named fp32 tensor. len(Data) must equal the product of Shape
// (1 for the empty shape). Names are unique within Params and within Optim,
// and "__metadata__" is reserved by safetensors.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// ScalerState is the dynamic loss scaler: the current scale (finite), the
// steps since the last overflow, and the number of steps skipped so far.
type ScalerState struct {
	Scale     float32 `json:"scale"`
	GoodSteps int     `json:"good_steps"`
	Skipped   int     `json:"skipped"`
}

// Info describes a published checkpoint: what OnPublished reports (and the
// coordinator records), what List and Latest return.
type Info struct {
	// Path is the checkpoint directory within its Storage ("job/step-00000050").
	Path       string    `json:"path"`
	Job        string    `json:"job"`
	ConfigHash string    `json:"config_hash"`
	Step       int       `json:"step"`
	Epoch      int       `json:"epoch"`
	WorldSize  int       `json:"world_size"`
	Precision  string    `json:"precision"`
	Created    time.Time `json:"created"`
	// Bytes is the total size of the checkpoint's files, manifest included.
	Bytes int64 `json:"bytes"`
	// ManifestSHA256 is the hex sha256 of manifest.json: it identifies the
	// content, so a recorded checkpoint can be told from one rewritten at
	// the same path.
	ManifestSHA256 string `json:"manifest_sha256"`
	// Problem is set only by List, for a directory whose manifest could not
	// be read or checked; the other fields are then zero except Path and
	// Step. List does not verify tensor checksums: Load does.
	Problem string `json:"problem,omitempty"`
	// Shards is the number of shards of a sharded checkpoint; 0 when it
	// is unsharded.
	Shards int `json:"shards,omitempty"`
}

func infoFromManifest(path string, m *Manifest, manifestSize int64, manifestSum string) Info {
	total := manifestSize
	for _, f := range m.Files {
		total += f.Size
	}
	for _, f := range m.Indexes {
		total += f.Size
	}
	return Info{
		Path: path, Job: m.Job, ConfigHash: m.ConfigHash, Step: m.Step, Epoch: m.Epoch,
		WorldSize: m.WorldSize, Precision: m.Precision, Created: m.Created,
		Bytes: total, ManifestSHA256: manifestSum, Shards: m.Shards,
	}
}

// validateMeta checks the non-tensor fields of s; it does not allocate.
func (s *State) validateMeta() error {
	switch {
	case !validJob(s.Job):
		return fmt.Errorf("%w: job name %q is not a single safe path segment", ErrInvalidState, s.Job)
	case s.Step < 0:
		return fmt.Errorf("%w: job %q: negative step %d", ErrInvalidState, s.Job, s.Step)
	case s.WorldSize < 0 || s.Epoch < 0 || s.SamplerEpoch < 0 || s.SamplerOffset < 0:
		return fmt.Errorf("%w: job %q step %d: negative world size, epoch or sampler position", ErrInvalidState, s.Job, s.Step)
	case math.IsNaN(float64(s.Scaler.Scale)) || math.IsInf(float64(s.Scaler.Scale), 0):
		return fmt.Errorf("%w: job %q step %d: loss scale %v is not finite", ErrInvalidState, s.Job, s.Step, s.Scaler.Scale)
	}
	if err := s.Shard.validate(); err != nil {
		return fmt.Errorf("%w: job %q step %d: %v", ErrInvalidState, s.Job, s.Step, err)
	}
	if s.Shard.Index > 0 && len(s.Sidecars) > 0 {
		return fmt.Errorf("%w: job %q step %d: shard %d of %d has sidecars (only shard 0 writes them)", ErrInvalidState, s.Job, s.Step, s.Shard.Index, s.Shard.Count)
	}
	for i, f := range s.Sidecars {
		for _, g := range s.Sidecars[:i] {
			if g.Name == f.Name {
				return fmt.Errorf("%w: job %q step %d: sidecar %q given twice", ErrInvalidState, s.Job, s.Step, f.Name)
			}
		}
		if err := checkSidecarName(f.Name); err != nil {
			return fmt.Errorf("%w: job %q step %d: %v", ErrInvalidState, s.Job, s.Step, err)
		}
		if len(f.Data) > maxSidecarBytes {
			return fmt.Errorf("%w: job %q step %d: sidecar %q of %d bytes (at most %d)", ErrInvalidState, s.Job, s.Step, f.Name, len(f.Data), maxSidecarBytes)
		}
	}
	return nil
}

// checkSidecarName refuses a sidecar name that is not a plain file name in
// the checkpoint directory or that is one of the checkpoint's own files.
func checkSidecarName(name string) error {
	switch {
	case name == ManifestFile || name == ModelFile || name == OptimizerFile || name == HFIndexFile ||
		isShardFile(name, ManifestFile) || isShardFile(name, ModelFile) || isShardFile(name, OptimizerFile):
		return fmt.Errorf("sidecar name %q is reserved", name)
	case !validJob(name): // the same rule: one segment, no '/', not hidden
		return fmt.Errorf("sidecar name %q is not a single safe path segment", name)
	}
	return nil
}

// validateTensor checks one tensor of s; it does not allocate on success.
func validateTensor(s *State, t *Tensor) error {
	if t.Name == "" || t.Name == "__metadata__" {
		return fmt.Errorf("%w: job %q step %d: tensor name %q is reserved or empty", ErrInvalidState, s.Job, s.Step, t.Name)
	}
	n, ok := numel(t.Shape)
	if !ok || n != len(t.Data) {
		return fmt.Errorf("%w: job %q step %d: tensor %q has %d values for shape %v", ErrInvalidState, s.Job, s.Step, t.Name, len(t.Data), t.Shape)
	}
	return nil
}
