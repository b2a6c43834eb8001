// Package checkpoint writes and reads loom's training checkpoints: atomic,
// checksummed, written asynchronously so that the training loop pays only for
// a copy of its state into reused buffers.
//
// # On-disk format
//
// One directory per step under the job's directory. An unsharded checkpoint
// (format version 1), written by one Writer holding the whole model:
//
//	<job>/step-00000050/
//	    model.safetensors      fp32 master weights (State.Params)
//	    optimizer.safetensors  fp32 optimizer state (State.Optim)
//	    config.json ...        sidecars (State.Sidecars), if any
//	    manifest.json          everything else, and the index of every tensor
//
// A sharded checkpoint (format version 2), written by N Writers, one per
// shard (a pipeline stage's layers), i = 1..N in Hugging Face's naming:
//
//	<job>/step-00000050/
//	    model-0000i-of-0000N.safetensors      shard i's parameters
//	    optimizer-0000i-of-0000N.safetensors  shard i's optimizer state
//	    manifest-0000i-of-0000N.json          shard i's own manifest
//	    config.json ...                       sidecars (from the shard of Index 0)
//	    model.safetensors.index.json          Hugging Face's index of the model files
//	    manifest.json                         covers every shard
//
// The tensor files are plain safetensors, readable by any safetensors reader:
// an 8-byte little-endian header length N, a JSON header of N bytes
// {"__metadata__": {...}, "<name>": {"dtype": "F32", "shape": [...],
// "data_offsets": [begin, end]}, ...} padded with spaces so that the data
// starts 8-byte aligned, then the raw little-endian data, tensors contiguous
// in the order they appear in the State.
//
// manifest.json (see Manifest) records the job, config hash, step, epoch,
// sampler position, RNG and loss-scaler state, precision, world size at save,
// creation time, the size of every file, and for every tensor its file, name,
// dtype, shape, absolute byte offsets within the file and sha256. A sharded
// checkpoint's manifest.json has the same fields, listing the tensor files
// and tensors of every shard in shard order, plus the shard count and
// attempt, and the size and sha256 of the index files (the Hugging Face
// index and each shard's manifest). A shard's manifest is a Manifest of its
// own files and tensors with the common fields and its part number. Tensor
// names are unique among all parameters and among all optimizer state, so a
// checkpoint is one State whatever its shards: it resumes on any layout. The
// manifest is written last: a directory without one is torn and never used.
// model.safetensors.index.json is {"metadata": {"total_size": bytes of the
// parameters}, "weight_map": {name: model file}}: transformers loads the
// directory as a sharded model.
//
// # Atomicity
//
// A Writer stages a checkpoint in <job>/.tmp-step-XXXXXXXX-<nonce>/, writing
// each file to a temporary name, syncing and renaming it; then it publishes
// the directory under its final name (rename and sync of the parent on a local
// disk; see Storage.Publish for object stores). Readers list only published
// names, and Load verifies sizes and checksums of every byte, so a torn,
// truncated or corrupted checkpoint is detected, named, and skipped by Latest.
//
// The shards of a sharded checkpoint share one staging directory per attempt,
// <job>/.tmp-step-XXXXXXXX-of-NNNNN-<attempt>/ (ShardID.Attempt: the plan
// generation), so that two layouts' attempts at one step never mix. Each
// shard writes its files and then its own manifest; the Writer that then
// finds every shard's manifest present claims the completion by creating a
// claim file exclusively (Storage.CreateExclusive), writes the Hugging Face
// index and manifest.json, and publishes; only the claimant publishes, and
// the other shards' Writers report their shard written (OnShardWritten). A
// checkpoint with a shard missing is never published.
//
// # Use
//
// The training loop owns a Writer (NewWriter) and calls Save at a step
// boundary, or Begin before the next forward pass and WaitCaptured before the
// next optimizer step; the write itself runs in the Writer's goroutine, and
// OnPublished reports each published checkpoint so the coordinator can record
// it. A pipeline stage saves a State with its own tensors and its ShardID.
// On resume, Latest(ctx, storage, job, AllowPaths(recorded...), log)
// returns the newest recorded checkpoint that verifies, whole; a stage loads
// only its layers with LoadTensors (or LatestTensors) and KeepParams. List
// serves `loom checkpoints list`.
package checkpoint

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/tensor"
)

// FormatVersion is the manifest format of an unsharded checkpoint (one
// model.safetensors and one optimizer.safetensors). ShardedFormatVersion is
// that of a sharded checkpoint: a reader of version 1 alone cannot find its
// tensor files, so it refuses the manifest as a newer version instead of
// calling it corrupt. Load accepts both.
const (
	FormatVersion        = 1
	ShardedFormatVersion = 2
)

// File names inside a checkpoint directory.
const (
	ManifestFile  = "manifest.json"
	ModelFile     = "model.safetensors"
	OptimizerFile = "optimizer.safetensors"
)

const (
	stepPrefix  = "step-"
	tmpPrefix   = ".tmp-"
	trashPrefix = ".trash-"
)

// Manifest is the content of manifest.json. Field names are the JSON
// contract; add fields, never rename them, and bump FormatVersion when a
// reader of the old version would misread a new file.
type Manifest struct {
	FormatVersion int               `json:"format_version"`
	Job           string            `json:"job"`
	ConfigHash    string            `json:"config_hash"`
	Config        string            `json:"config,omitempty"` // the job config, YAML
	Step          int               `json:"step"`
	Epoch         int               `json:"epoch"`
	Sampler       SamplerPosition   `json:"sampler"`
	RNG           map[string]uint64 `json:"rng"`
	Scaler        ScalerState       `json:"scaler"`
	Precision     string            `json:"precision"`
	WorldSize     int               `json:"world_size"`
	Created       time.Time         `json:"created"`
	Files         []FileEntry       `json:"files"`
	Tensors       []TensorEntry     `json:"tensors"`
	Sidecars      []SidecarEntry    `json:"sidecars,omitempty"`

	// Sharded checkpoints (format version 2) only; absent in version 1.
	//
	// Shards is the number of shards and Attempt the attempt that wrote
	// them (ShardID). Part is set in a shard's own manifest
	// (manifest-00002-of-00004.json): its 1-based number, as in its file
	// names; it is absent from manifest.json, which covers every shard.
	Shards  int    `json:"shards,omitempty"`
	Attempt string `json:"attempt,omitempty"`
	Part    int    `json:"part,omitempty"`
	// Indexes, in manifest.json of a sharded checkpoint, are the files
	// derived from the others: model.safetensors.index.json and each
	// shard's manifest. Load verifies their size and sha256; they are no
	// part of the State.
	Indexes []SidecarEntry `json:"indexes,omitempty"`
}

// SidecarEntry is one small non-tensor file of the checkpoint (see
// State.Sidecars): its name, exact size and lower-case hex sha256.
type SidecarEntry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// SamplerPosition is where the data sampler resumes: the epoch and the number
// of samples of that epoch already consumed (summed over all ranks).
type SamplerPosition struct {
	Epoch  int `json:"epoch"`
	Offset int `json:"offset"`
}

// FileEntry is one tensor file of a checkpoint and its exact size in bytes.
type FileEntry struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// TensorEntry locates one tensor. Begin and End are absolute byte offsets in
// File (header included), so a reader can seek without parsing the
// safetensors header; End-Begin = 4·numel for F32. SHA256 is the lower-case
// hex sha256 of the bytes [Begin, End).
type TensorEntry struct {
	File   string `json:"file"`
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	Begin  int64  `json:"begin"`
	End    int64  `json:"end"`
	SHA256 string `json:"sha256"`
}

// StepDir is the storage path of the checkpoint of job at step.
func StepDir(job string, step int) string {
	return job + "/" + stepName(step)
}

func stepName(step int) string { return fmt.Sprintf("%s%08d", stepPrefix, step) }

// parseStepName returns the step of a published directory name
// ("step-00000050"), or false for anything else (temporary and trash
// directories, stray files).
func parseStepName(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, stepPrefix)
	if !ok || len(digits) < 8 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 || stepName(n) != name {
		return 0, false
	}
	return n, true
}

// validJob reports whether job can be one path segment: non-empty, no
// slash or backslash, not starting with '.', no control characters.
func validJob(job string) bool {
	if job == "" || job[0] == '.' || len(job) > 200 {
		return false
	}
	for _, r := range job {
		if r == '/' || r == '\\' || r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

var f32Name = tensor.F32.SafetensorsName()

// check validates the manifest.json of the checkpoint at path (see
// checkPart).
func (m *Manifest) check(path, job string, step int) error { return m.checkPart(path, job, step, 0) }

// checkPart validates the manifest's internal consistency (not the files):
// the version, the job and step named by path, the file names the layout
// implies, and that every tensor lies in a listed file with a size that
// matches its shape. part 0 is a checkpoint's manifest.json; part p ≥ 1 is
// the manifest of shard p (1-based) of a sharded checkpoint in staging.
// path is for messages.
func (m *Manifest) checkPart(path, job string, step, part int) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: manifest: %s", ErrCorrupt, path, fmt.Sprintf(format, a...))
	}
	if m.FormatVersion != FormatVersion && m.FormatVersion != ShardedFormatVersion {
		return fmt.Errorf("%w: %s: format_version %d, this build reads %d and %d", ErrVersion, path, m.FormatVersion, FormatVersion, ShardedFormatVersion)
	}
	if m.Job != job {
		return bad("job %q, directory belongs to %q", m.Job, job)
	}
	if m.Step != step {
		return bad("step %d, directory is for step %d", m.Step, step)
	}
	if math.IsNaN(float64(m.Scaler.Scale)) || math.IsInf(float64(m.Scaler.Scale), 0) {
		return bad("loss scale %v is not finite", m.Scaler.Scale)
	}
	if m.Part != part {
		return bad("part %d, expected %d", m.Part, part)
	}
	var files, indexes []string
	if m.FormatVersion == FormatVersion {
		if m.Shards != 0 || m.Attempt != "" || part != 0 {
			return bad("format_version %d with shards %d, attempt %q, part %d", m.FormatVersion, m.Shards, m.Attempt, part)
		}
		files = []string{ModelFile, OptimizerFile}
	} else {
		if m.Shards < 2 || m.Shards > MaxShards || part > m.Shards {
			return bad("part %d of %d shards (a sharded checkpoint has 2 to %d)", part, m.Shards, MaxShards)
		}
		if err := checkAttempt(m.Attempt); err != nil {
			return bad("%v", err)
		}
		if part > 0 {
			files = []string{shardFile(ModelFile, part-1, m.Shards), shardFile(OptimizerFile, part-1, m.Shards)}
		} else {
			for i := range m.Shards {
				files = append(files, shardFile(ModelFile, i, m.Shards), shardFile(OptimizerFile, i, m.Shards))
				indexes = append(indexes, shardFile(ManifestFile, i, m.Shards))
			}
			indexes = append(indexes, HFIndexFile)
		}
	}
	sizes := make(map[string]int64, len(m.Files))
	for _, f := range m.Files {
		if !slices.Contains(files, f.Name) {
			return bad("unexpected file %q", f.Name)
		}
		if _, dup := sizes[f.Name]; dup {
			return bad("file %q listed twice", f.Name)
		}
		sizes[f.Name] = f.Size
	}
	for _, want := range files {
		if _, ok := sizes[want]; !ok {
			return bad("file %q not listed", want)
		}
	}
	if len(m.Indexes) != len(indexes) {
		return bad("%d index files listed, the layout has %d", len(m.Indexes), len(indexes))
	}
	for _, f := range m.Indexes {
		if !slices.Contains(indexes, f.Name) {
			return bad("unexpected index file %q", f.Name)
		}
		if _, dup := sizes[f.Name]; dup {
			return bad("file %q listed twice", f.Name)
		}
		sizes[f.Name] = -1 // holds no tensors
		if f.Size < 0 || f.Size > maxManifestBytes || len(f.SHA256) != 64 {
			return bad("index file %q: size %d, sha256 %q", f.Name, f.Size, f.SHA256)
		}
	}
	if part > 1 && len(m.Sidecars) > 0 {
		return bad("sidecars in shard %d (only the first shard writes them)", part)
	}
	for _, f := range m.Sidecars {
		if err := checkSidecarName(f.Name); err != nil {
			return bad("%v", err)
		}
		if _, dup := sizes[f.Name]; dup {
			return bad("file %q listed twice", f.Name)
		}
		sizes[f.Name] = -1 // holds no tensors: any tensor "in" it fails the bounds check below
		if f.Size < 0 || f.Size > maxSidecarBytes || len(f.SHA256) != 64 {
			return bad("sidecar %q: size %d, sha256 %q", f.Name, f.Size, f.SHA256)
		}
	}
	// Names are unique among the parameters and among the optimizer
	// state, across all files of either kind.
	seen := make(map[[2]string]bool, len(m.Tensors))
	for i, t := range m.Tensors {
		size, ok := sizes[t.File]
		if !ok {
			return bad("tensor %d (%q) in unlisted file %q", i, t.Name, t.File)
		}
		key := [2]string{OptimizerFile, t.Name}
		if paramsFile(t.File) {
			key[0] = ModelFile
		}
		if seen[key] {
			return bad("tensor %q listed twice in %s", t.Name, t.File)
		}
		seen[key] = true
		if t.DType != f32Name {
			return bad("tensor %q has dtype %q, want %s", t.Name, t.DType, f32Name)
		}
		n, ok := numel(t.Shape)
		if !ok {
			return bad("tensor %q has invalid shape %v", t.Name, t.Shape)
		}
		if t.Begin < 0 || t.End != t.Begin+4*int64(n) || t.End > size {
			return bad("tensor %q: offsets [%d, %d) do not hold %d F32 values in a file of %d bytes", t.Name, t.Begin, t.End, n, size)
		}
		if len(t.SHA256) != 64 {
			return bad("tensor %q: sha256 %q is not 64 hex digits", t.Name, t.SHA256)
		}
	}
	return nil
}

// numel is the element count of shape, false for negative dimensions or
// overflow past 2^40 elements.
func numel(shape []int) (int, bool) {
	n := 1
	for _, d := range shape {
		if d < 0 || (d > 0 && n > (1<<40)/d) {
			return 0, false
		}
		n *= d
	}
	return n, true
}
