// Package checkpoint writes and reads loom's training checkpoints: atomic,
// checksummed, written asynchronously so that the training loop pays only for
// a copy of its state into reused buffers.
//
// # On-disk format (version 1)
//
// One directory per step under the job's directory:
//
//	<job>/step-00000050/
//	    model.safetensors      fp32 master weights (State.Params)
//	    optimizer.safetensors  fp32 optimizer state (State.Optim)
//	    manifest.json          everything else, and the index of every tensor
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
// dtype, shape, absolute byte offsets within the file and sha256. The
// manifest is written last: a directory without one is torn and never used.
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
// # Use
//
// The training loop owns a Writer (NewWriter) and calls Save at a step
// boundary, or Begin before the next forward pass and WaitCaptured before the
// next optimizer step; the write itself runs in the Writer's goroutine, and
// OnPublished reports each published checkpoint so the coordinator can record
// it. On resume, Latest(ctx, storage, job, AllowPaths(recorded...), log)
// returns the newest recorded checkpoint that verifies. List serves
// `loom checkpoints list`.
package checkpoint

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/tensor"
)

// FormatVersion is the manifest format this package writes. Load accepts
// exactly this version.
const FormatVersion = 1

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

// check validates the manifest's internal consistency (not the files): the
// version, the job and step named by path, and that every tensor lies in a
// listed file with a size that matches its shape. path is for messages.
func (m *Manifest) check(path, job string, step int) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: manifest: %s", ErrCorrupt, path, fmt.Sprintf(format, a...))
	}
	if m.FormatVersion != FormatVersion {
		return fmt.Errorf("%w: %s: format_version %d, this build reads %d", ErrVersion, path, m.FormatVersion, FormatVersion)
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
	sizes := make(map[string]int64, len(m.Files))
	for _, f := range m.Files {
		if f.Name != ModelFile && f.Name != OptimizerFile {
			return bad("unexpected file %q", f.Name)
		}
		if _, dup := sizes[f.Name]; dup {
			return bad("file %q listed twice", f.Name)
		}
		sizes[f.Name] = f.Size
	}
	for _, want := range []string{ModelFile, OptimizerFile} {
		if _, ok := sizes[want]; !ok {
			return bad("file %q not listed", want)
		}
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
	seen := make(map[[2]string]bool, len(m.Tensors))
	for i, t := range m.Tensors {
		size, ok := sizes[t.File]
		if !ok {
			return bad("tensor %d (%q) in unlisted file %q", i, t.Name, t.File)
		}
		key := [2]string{t.File, t.Name}
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
