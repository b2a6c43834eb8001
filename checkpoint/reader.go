package checkpoint

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"go.uber.org/zap"
)

// maxManifestBytes bounds the manifest a reader accepts.
const maxManifestBytes = 64 << 20

// Load reads the checkpoint at path ("job/step-00000050") and verifies all
// of it: the manifest, the size of every file, each safetensors header
// against the manifest, and the sha256 of every tensor. Errors wrap
// ErrIncomplete (no manifest), ErrCorrupt, ErrVersion, ErrInvalidPath, or the
// storage's or ctx's error, and name path (and the damaged file). Tensors
// come back in the order they were saved, a sharded checkpoint's shard
// after shard, with Shard zero: the whole model, to resume on any layout.
// The RNG map is never nil.
func Load(ctx context.Context, st Storage, path string) (*State, error) {
	s, _, err := load(ctx, st, path, nil)
	return s, err
}

// LoadTensors is Load returning only the tensors (of Params and Optim)
// whose name keep accepts; nil keeps all. It reads and hashes only their
// bytes (seeking past the others where the storage's reader can), so a
// pipeline stage loads its own layers of any checkpoint, sharded or not,
// whatever layout wrote it. What is checked: the manifest, the size and
// safetensors header of every file, the sidecars and index files, and the
// sha256 of every tensor returned; damage to the data of a tensor not
// returned goes unseen (a truncated or missing file never does).
func LoadTensors(ctx context.Context, st Storage, path string, keep func(name string) bool) (*State, error) {
	s, _, err := load(ctx, st, path, keep)
	return s, err
}

// KeepParams returns a filter for LoadTensors and LatestTensors that keeps
// the named parameters and their optimizer state, whose names are
// "<parameter>.<kind>" ("h.0.mlp.c_fc.weight.m").
func KeepParams(names ...string) func(name string) bool {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return func(name string) bool {
		if set[name] {
			return true
		}
		i := strings.LastIndexByte(name, '.')
		return i > 0 && set[name[:i]]
	}
}

// ParsePath parses a checkpoint path, "job/step-XXXXXXXX", relative to the
// checkpoint root; anything else (an absolute path, "..", another layout)
// is ErrInvalidPath.
func ParsePath(path string) (job string, step int, err error) {
	job, name, ok := strings.Cut(path, "/")
	if ok && validJob(job) {
		if step, ok := parseStepName(name); ok {
			return job, step, nil
		}
	}
	return "", 0, fmt.Errorf("%w: %q is not <job>/step-XXXXXXXX", ErrInvalidPath, path)
}

// readManifest reads and checks the manifest of the checkpoint at path.
func readManifest(ctx context.Context, st Storage, path string) (*Manifest, Info, error) {
	job, step, err := ParsePath(path)
	if err != nil {
		return nil, Info{}, err
	}
	m, raw, err := readManifestFile(ctx, st, path+"/"+ManifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Info{}, fmt.Errorf("%w: %s", ErrIncomplete, path)
	}
	if err != nil {
		return nil, Info{}, err
	}
	if err := m.check(path, job, step); err != nil {
		return nil, Info{}, err
	}
	sum := sha256.Sum256(raw)
	return m, infoFromManifest(path, m, int64(len(raw)), hex.EncodeToString(sum[:])), nil
}

// readManifestFile reads and parses (does not check) the manifest name:
// a checkpoint's manifest.json or one shard's. A missing file is an error
// for which errors.Is(err, fs.ErrNotExist) holds.
func readManifestFile(ctx context.Context, st Storage, name string) (*Manifest, []byte, error) {
	rc, size, err := st.Open(ctx, name)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: %s: %w", name, err)
	}
	defer rc.Close()
	if size > maxManifestBytes {
		return nil, nil, fmt.Errorf("%w: %s: manifest of %d bytes", ErrCorrupt, name, size)
	}
	raw, err := io.ReadAll(io.LimitReader(rc, maxManifestBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: %s: reading manifest: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: manifest: %v", ErrCorrupt, name, err)
	}
	return &m, raw, nil
}

func load(ctx context.Context, st Storage, path string, keep func(string) bool) (*State, Info, error) {
	m, info, err := readManifest(ctx, st, path)
	if err != nil {
		return nil, Info{}, err
	}
	s := &State{
		Job: m.Job, ConfigHash: m.ConfigHash, Config: m.Config, Step: m.Step, Epoch: m.Epoch,
		SamplerEpoch: m.Sampler.Epoch, SamplerOffset: m.Sampler.Offset,
		WorldSize: m.WorldSize, Precision: m.Precision, RNG: m.RNG, Scaler: m.Scaler,
	}
	if s.RNG == nil {
		s.RNG = map[string]uint64{}
	}
	for _, f := range m.Files {
		ts, err := loadFile(ctx, st, path, f, m.Tensors, keep)
		if err != nil {
			return nil, Info{}, err
		}
		dst := &s.Optim
		if paramsFile(f.Name) {
			dst = &s.Params
		}
		if *dst == nil {
			*dst = ts
		} else {
			*dst = append(*dst, ts...)
		}
	}
	for _, f := range m.Sidecars {
		b, err := loadSmall(ctx, st, path, f, maxSidecarBytes)
		if err != nil {
			return nil, Info{}, err
		}
		s.Sidecars = append(s.Sidecars, Sidecar{Name: f.Name, Data: b})
	}
	for _, f := range m.Indexes {
		if _, err := loadSmall(ctx, st, path, f, maxManifestBytes); err != nil {
			return nil, Info{}, err
		}
	}
	return s, info, nil
}

// openListed opens a file the manifest lists with its exact size.
func openListed(ctx context.Context, st Storage, name string, want int64) (io.ReadCloser, int64, error) {
	rc, size, err := st.Open(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w: %s: missing (listed in the manifest)", ErrCorrupt, name)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("checkpoint: %s: %w", name, err)
	}
	if size != want {
		rc.Close()
		return nil, 0, fmt.Errorf("%w: %s: %d bytes, manifest says %d (truncated or overwritten)", ErrCorrupt, name, size, want)
	}
	return rc, size, nil
}

// loadSmall reads one sidecar or index file (of at most limit bytes) and
// verifies its size and checksum.
func loadSmall(ctx context.Context, st Storage, dir string, f SidecarEntry, limit int64) ([]byte, error) {
	name := dir + "/" + f.Name
	rc, _, err := openListed(ctx, st, name, f.Size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: %w", name, err)
	}
	if sum := sha256.Sum256(b); int64(len(b)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
		return nil, fmt.Errorf("%w: %s: content does not match the manifest's size and sha256", ErrCorrupt, name)
	}
	return b, nil
}

// loadFile reads one tensor file and verifies it against the manifest:
// its size, its header, and the sha256 of every tensor keep accepts (nil:
// all), which it returns in manifest order. The other tensors' bytes are
// skipped, by seeking where the storage's reader is an io.Seeker.
func loadFile(ctx context.Context, st Storage, dir string, f FileEntry, index []TensorEntry, keep func(string) bool) ([]Tensor, error) {
	name := dir + "/" + f.Name
	rc, size, err := openListed(ctx, st, name, f.Size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var entries []TensorEntry
	slot := []int{} // per entry: its place in the result, or -1
	wanted := 0
	for _, e := range index {
		if e.File == f.Name {
			entries = append(entries, e)
			if keep == nil || keep(e.Name) {
				slot = append(slot, wanted)
				wanted++
			} else {
				slot = append(slot, -1)
			}
		}
	}
	bufSize := 256 << 10
	if wanted == 0 {
		bufSize = 16 << 10 // the header only
	}
	r := bufio.NewReaderSize(rc, bufSize)
	h, err := readHeader(r, size, name)
	if err != nil {
		return nil, err
	}
	if err := matchHeader(h, f.Name, index, name); err != nil {
		return nil, err
	}
	// Read in file order; report tensors in manifest order.
	order := make([]int, len(entries))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		ea, eb := &entries[order[a]], &entries[order[b]]
		return ea.Begin < eb.Begin || (ea.Begin == eb.Begin && ea.End < eb.End)
	})
	seeker, _ := rc.(io.Seeker)
	out := make([]Tensor, wanted)
	pos := h.DataStart // where the manifest's tensors have reached
	at := h.DataStart  // where r is
	for _, i := range order {
		e := entries[i]
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if e.Begin != pos {
			return nil, fmt.Errorf("%w: %s: tensor %q starts at %d, previous ends at %d (gap or overlap)", ErrCorrupt, name, e.Name, e.Begin, pos)
		}
		pos = e.End
		if slot[i] < 0 {
			continue
		}
		if skip := e.Begin - at; skip > 0 {
			if seeker != nil && skip > int64(r.Buffered()) {
				if _, err := seeker.Seek(e.Begin, io.SeekStart); err != nil {
					return nil, fmt.Errorf("checkpoint: %s: seeking to tensor %q: %w", name, e.Name, err)
				}
				r.Reset(rc)
			} else if _, err := r.Discard(int(skip)); err != nil {
				return nil, fmt.Errorf("%w: %s: tensor %q at [%d, %d): %v", ErrCorrupt, name, e.Name, e.Begin, e.End, err)
			}
		}
		data := make([]float32, (e.End-e.Begin)/4)
		if err := readF32(r, data); err != nil {
			return nil, fmt.Errorf("%w: %s: tensor %q at [%d, %d): %v", ErrCorrupt, name, e.Name, e.Begin, e.End, err)
		}
		if got := sumF32(data); got != e.SHA256 {
			return nil, fmt.Errorf("%w: %s: tensor %q at [%d, %d): sha256 %s, manifest says %s", ErrCorrupt, name, e.Name, e.Begin, e.End, got, e.SHA256)
		}
		out[slot[i]] = Tensor{Name: e.Name, Shape: e.Shape, Data: data}
		at = e.End
	}
	if pos != size {
		return nil, fmt.Errorf("%w: %s: %d trailing bytes after the last tensor", ErrCorrupt, name, size-pos)
	}
	return out, nil
}

// f32Bytes views data as its in-memory bytes (little-endian on the hosts
// loom runs on; see littleEndian).
func f32Bytes(data []float32) []byte {
	if len(data) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), len(data)*4)
}

// readF32 fills data from little-endian bytes.
func readF32(r io.Reader, data []float32) error {
	b := f32Bytes(data)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	if !littleEndian {
		for i := range data {
			data[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	}
	return nil
}

// sumF32 is the hex sha256 of data's little-endian bytes.
func sumF32(data []float32) string {
	var sum [32]byte
	if littleEndian {
		sum = sha256.Sum256(f32Bytes(data))
	} else {
		h := sha256.New()
		var b [4]byte
		for _, v := range data {
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			h.Write(b[:])
		}
		copy(sum[:], h.Sum(nil))
	}
	return hex.EncodeToString(sum[:])
}

// AllowPaths returns an allowed-filter for Latest that accepts exactly the
// given checkpoint paths: the ones the coordinator recorded.
func AllowPaths(paths ...string) func(path string) bool {
	set := make(map[string]bool, len(paths))
	for _, p := range paths {
		set[p] = true
	}
	return func(path string) bool { return set[path] }
}

// scan lists job's published checkpoint steps (newest first) and its
// leftover temporary or trash directories.
func scan(ctx context.Context, st Storage, job string) (steps []int, leftovers []string, err error) {
	if !validJob(job) {
		return nil, nil, fmt.Errorf("%w: job name %q", ErrInvalidPath, job)
	}
	names, err := st.List(ctx, job)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: listing %s: %w", job, err)
	}
	for _, name := range names {
		if step, ok := parseStepName(name); ok {
			steps = append(steps, step)
		} else if strings.HasPrefix(name, tmpPrefix) || strings.HasPrefix(name, trashPrefix) {
			leftovers = append(leftovers, job+"/"+name)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(steps)))
	return steps, leftovers, nil
}

// Latest loads the newest valid checkpoint of job among those allowed
// accepts (nil accepts every published one). Each rejected checkpoint, and
// each leftover temporary directory of an interrupted write (an unfinished
// sharded checkpoint's included), is named in a warning on log (nil: no
// logging), and the next older one is tried. If none is valid the error
// wraps ErrNoCheckpoint (and the rejections' errors) and names every path
// tried and why it failed.
func Latest(ctx context.Context, st Storage, job string, allowed func(path string) bool, log *zap.Logger) (*State, Info, error) {
	return latest(ctx, st, job, allowed, nil, log)
}

// LatestTensors is Latest loading each candidate with LoadTensors(keep).
// The stages of one resume must resume from one checkpoint: since each
// verifies only the tensors it keeps, two stages' LatestTensors can choose
// differently when the data of only one stage's tensors is damaged. Choose
// the path once (Latest in one process, or the coordinator's record) and
// LoadTensors it in every stage; or compare the Info.Path the stages got.
func LatestTensors(ctx context.Context, st Storage, job string, allowed func(path string) bool, keep func(name string) bool, log *zap.Logger) (*State, Info, error) {
	return latest(ctx, st, job, allowed, keep, log)
}

func latest(ctx context.Context, st Storage, job string, allowed func(path string) bool, keep func(string) bool, log *zap.Logger) (*State, Info, error) {
	if log == nil {
		log = zap.NewNop()
	}
	steps, leftovers, err := scan(ctx, st, job)
	if err != nil {
		return nil, Info{}, err
	}
	for _, p := range leftovers {
		log.Warn("checkpoint: ignoring leftover directory of an interrupted write", zap.String("path", p))
	}
	var tried []string
	var errs []error
	skipped := 0
	for _, step := range steps {
		p := StepDir(job, step)
		if allowed != nil && !allowed(p) {
			skipped++
			continue
		}
		s, info, err := load(ctx, st, p, keep)
		if err == nil {
			if len(tried) > 0 {
				log.Warn("checkpoint: resuming from an older checkpoint", zap.String("path", p), zap.Strings("rejected", tried))
			}
			return s, info, nil
		}
		if ctx.Err() != nil {
			return nil, Info{}, ctx.Err()
		}
		log.Warn("checkpoint: invalid checkpoint skipped", zap.String("path", p), zap.Error(err))
		tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
		errs = append(errs, err)
	}
	msg := fmt.Sprintf("job %q: %d published checkpoint(s), %d not allowed (not recorded)", job, len(steps), skipped)
	if len(tried) > 0 {
		msg += "; tried " + strings.Join(tried, "; ")
	}
	if len(leftovers) > 0 {
		msg += "; ignored leftovers " + strings.Join(leftovers, ", ")
	}
	return nil, Info{}, fmt.Errorf("%w: %s%w", ErrNoCheckpoint, msg, wrapAll(errs))
}

// wrapAll lets errors.Is see the rejections' errors without repeating their
// text (already in the message).
func wrapAll(errs []error) error { return silent{errors.Join(errs...)} }

type silent struct{ err error }

func (s silent) Error() string { return "" }
func (s silent) Unwrap() error { return s.err }

// List describes job's published checkpoints, oldest first, from their
// manifests (checked, but tensor checksums are not verified: Load does
// that). A checkpoint whose manifest is missing or invalid is listed with
// Problem set. Leftover temporary directories are not listed.
func List(ctx context.Context, st Storage, job string) ([]Info, error) {
	steps, _, err := scan(ctx, st, job)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(steps))
	for i := len(steps) - 1; i >= 0; i-- {
		p := StepDir(job, steps[i])
		_, info, err := readManifest(ctx, st, p)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			info = Info{Path: p, Job: job, Step: steps[i], Problem: err.Error()}
		}
		out = append(out, info)
	}
	return out, nil
}

// LoadDir loads and verifies the published checkpoint directory dir (a
// filesystem path ending in <job>/step-XXXXXXXX), as `loom eval` and
// `loom generate` name it.
func LoadDir(ctx context.Context, dir string) (*State, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	store, err := NewLocalStorage(filepath.Dir(filepath.Dir(abs)))
	if err != nil {
		return nil, err
	}
	return Load(ctx, store, filepath.Base(filepath.Dir(abs))+"/"+filepath.Base(abs))
}
