package checkpoint

import (
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// ShardID says which part of a sharded checkpoint a State is. Count 0 or 1
// is an unsharded checkpoint (Index 0; Attempt, if any, is only compared by
// retention): the whole model, written by one Writer, byte for byte as
// before sharding existed.
//
// With Count ≥ 2, each of Count Writers (one per pipeline stage, in
// different processes over one shared file system) saves the State of its
// shard, Index 0 to Count-1: its own Params and Optim only, and the same
// scalar fields (step, epoch, sampler, RNG, scaler, precision, world size,
// config) as every other shard of the checkpoint. Only shard 0 may carry
// Sidecars. Attempt names the attempt of this checkpoint (the plan
// generation): identical in all shards of one attempt, different in a later
// attempt of the same step, so that the shards of two layouts never mix.
// Each (step, Attempt) is saved once per shard.
type ShardID struct {
	Index, Count int
	// Attempt: 1 to 64 characters of [A-Za-z0-9._-]. When both of two
	// attempts are decimal numbers, the larger is the newer; retention
	// never removes the staging directory of a newer attempt.
	Attempt string
}

// MaxShards bounds ShardID.Count: file names carry five digits, as
// Hugging Face's do.
const MaxShards = 99999

// HFIndexFile is the Hugging Face index of a sharded checkpoint's model
// files: {"metadata": {"total_size": bytes}, "weight_map": {tensor: file}},
// so that transformers' from_pretrained loads the directory.
const HFIndexFile = "model.safetensors.index.json"

// claimFile is created (exclusively) in a sharded checkpoint's staging
// directory by the one Writer that completes and publishes it; it is
// removed from the published directory.
const claimFile = ".complete"

// sharded reports whether id is one shard of several.
func (id ShardID) sharded() bool { return id.Count > 1 }

// validate checks id as Save and Begin require.
func (id ShardID) validate() error {
	switch {
	case id.Count < 0 || id.Count > MaxShards:
		return fmt.Errorf("shard count %d outside 0..%d", id.Count, MaxShards)
	case !id.sharded() && id.Index != 0:
		return fmt.Errorf("shard index %d of an unsharded checkpoint (count %d)", id.Index, id.Count)
	case id.sharded() && (id.Index < 0 || id.Index >= id.Count):
		return fmt.Errorf("shard index %d outside 0..%d", id.Index, id.Count-1)
	case id.sharded():
		return checkAttempt(id.Attempt)
	}
	return nil
}

// checkAttempt refuses an attempt name that cannot be part of a directory
// name, or that is empty (all shards of every attempt would share one
// staging directory).
func checkAttempt(a string) error {
	if a == "" || len(a) > 64 {
		return fmt.Errorf("shard attempt %q: want 1 to 64 characters (the plan generation)", a)
	}
	for _, r := range a {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("shard attempt %q: only [A-Za-z0-9._-] may be used", a)
		}
	}
	return nil
}

// shardFile is the name of shard index's (0-based) part of file name in a
// checkpoint of count shards: "model-00002-of-00004.safetensors" for
// ModelFile, index 1, count 4 (Hugging Face's naming).
func shardFile(name string, index, count int) string {
	ext := path.Ext(name)
	return fmt.Sprintf("%s-%05d-of-%05d%s", strings.TrimSuffix(name, ext), index+1, count, ext)
}

// isShardFile reports whether name is some shard's part of file base.
func isShardFile(name, base string) bool {
	ext := path.Ext(base)
	rest, ok := strings.CutPrefix(name, strings.TrimSuffix(base, ext)+"-")
	if !ok {
		return false
	}
	rest, ok = strings.CutSuffix(rest, ext)
	i, n, ok2 := strings.Cut(rest, "-of-")
	return ok && ok2 && len(i) == 5 && len(n) == 5 && allDigits(i) && allDigits(n)
}

func allDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// paramsFile reports whether a tensor file of a checkpoint holds
// parameters (model*.safetensors) rather than optimizer state.
func paramsFile(name string) bool { return name == ModelFile || isShardFile(name, ModelFile) }

// shardStaging is the staging directory shared by the shards of one
// attempt of job's checkpoint at step: <job>/.tmp-step-XXXXXXXX-of-NNNNN-<attempt>.
func shardStaging(job string, step int, id ShardID) string {
	return fmt.Sprintf("%s/%s%s-of-%05d-%s", job, tmpPrefix, stepName(step), id.Count, id.Attempt)
}

// parseLeftover parses the name of a temporary or trash directory of a job:
// ".tmp-step-XXXXXXXX-<nonce>" (an unsharded write), ".tmp-step-XXXXXXXX-
// of-NNNNN-<attempt>" (a sharded one) or ".trash-step-XXXXXXXX-<nonce>". It
// returns the step, and the attempt of a sharded staging directory ("" for
// the others); false for any other name.
func parseLeftover(name string) (step int, attempt string, ok bool) {
	rest, ok := strings.CutPrefix(name, tmpPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(name, trashPrefix); !ok {
			return 0, "", false
		}
	}
	digits, ok := strings.CutPrefix(rest, stepPrefix)
	if !ok {
		return 0, "", false
	}
	digits, rest, _ = strings.Cut(digits, "-")
	if len(digits) < 8 || !allDigits(digits) {
		return 0, "", false
	}
	step, err := strconv.Atoi(digits)
	if err != nil {
		return 0, "", false
	}
	if count, attempt, ok := strings.Cut(strings.TrimPrefix(rest, "of-"), "-"); ok && strings.HasPrefix(rest, "of-") && len(count) == 5 && allDigits(count) {
		return step, attempt, true
	}
	return step, "", true
}

// newerAttempt reports whether attempt a is known to be newer than b: both
// are decimal numbers (plan generations) and a is the larger.
func newerAttempt(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x > y
}

// ShardInfo describes one shard of a sharded checkpoint whose files are
// written and durable in the staging directory, where this shard's Writer
// did not publish the checkpoint: what OnShardWritten reports.
type ShardInfo struct {
	// Path is where the checkpoint is published once every shard is
	// written ("job/step-00000050"); Staging is the staging directory the
	// shards share.
	Path, Staging string
	Job           string
	Step          int
	Shard         ShardID
	// Bytes is the size of this shard's files, its manifest included.
	Bytes int64
	// AllPresent: every shard was written when this one finished, and
	// another shard's Writer claimed the completion (it publishes the
	// checkpoint and calls OnPublished, or reports its failure). False:
	// some shard was still missing; the last shard to finish publishes.
	AllPresent bool
}

// hfIndex is the content of HFIndexFile.
type hfIndex struct {
	Metadata  map[string]int64  `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// hfIndexJSON builds the Hugging Face index of m's model files: every
// parameter mapped to its file, and total_size the bytes of all of them
// (as transformers' sharding writes it: tensor data, no headers).
func hfIndexJSON(m *Manifest) []byte {
	idx := hfIndex{Metadata: map[string]int64{"total_size": 0}, WeightMap: map[string]string{}}
	for _, t := range m.Tensors {
		if paramsFile(t.File) {
			idx.WeightMap[t.Name] = t.File
			idx.Metadata["total_size"] += t.End - t.Begin
		}
	}
	raw, err := json.MarshalIndent(idx, "", "  ")
	if err != nil { // unreachable: maps of strings and ints always marshal
		panic(err)
	}
	return append(raw, '\n')
}
