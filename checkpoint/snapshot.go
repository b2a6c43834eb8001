package checkpoint

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"time"
	"unsafe"
)

// littleEndian is true on the hosts loom runs on; on others the copy into the
// file's little-endian layout swaps bytes (slower, same format).
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// copyChunk is the largest single memmove of a capture: large enough for
// memmove's non-temporal path (about 1.5× faster here than 256 KiB chunks),
// small enough (~100 µs) not to hold off a GC stop-the-world for long.
const copyChunk = 1 << 20

// fileBuf is one tensor file's captured content, reused from save to save:
// the layout (names, shapes, offsets) is rebuilt only when the State's
// tensors change names or shapes, and the data buffer only when it grows.
type fileBuf struct {
	name    string
	entries []stEntry   // data-relative offsets, in State order
	src     [][]float32 // borrowed State data, between capture and copy
	data    []byte      // the data section, exactly as in the file
	sums    [][32]byte  // sha256 per tensor, filled by write
	header  []byte      // the encoded header, filled by write
}

// matches reports whether ts has this buffer's layout. It does not allocate.
func (f *fileBuf) matches(ts []Tensor) bool {
	if len(ts) != len(f.entries) || f.data == nil {
		return false
	}
	for i := range ts {
		e := &f.entries[i]
		if ts[i].Name != e.Name || !equalInts(ts[i].Shape, e.Shape) || int64(len(ts[i].Data))*4 != e.End-e.Begin {
			return false
		}
	}
	return true
}

// relayout validates ts and rebuilds the layout for it (allocates).
func (f *fileBuf) relayout(s *State, ts []Tensor) error {
	seen := make(map[string]bool, len(ts))
	entries := make([]stEntry, len(ts))
	var off int64
	for i := range ts {
		t := &ts[i]
		if err := validateTensor(s, t); err != nil {
			return err
		}
		if seen[t.Name] {
			return fmt.Errorf("%w: job %q step %d: tensor name %q appears twice in %s", ErrInvalidState, s.Job, s.Step, t.Name, f.name)
		}
		seen[t.Name] = true
		n := int64(len(t.Data)) * 4
		entries[i] = stEntry{Name: t.Name, Shape: append([]int{}, t.Shape...), Begin: off, End: off + n}
		off += n
	}
	f.entries = entries
	f.src = make([][]float32, len(ts))
	f.sums = make([][32]byte, len(ts))
	if int64(cap(f.data)) >= off {
		f.data = f.data[:off]
	} else {
		f.data = make([]byte, off)
	}
	return nil
}

// borrow records ts's data slices for copyData. It does not allocate.
func (f *fileBuf) borrow(ts []Tensor) {
	for i := range ts {
		f.src[i] = ts[i].Data
	}
}

// copyData copies the borrowed slices into the data section and drops the
// references. It does not allocate.
func (f *fileBuf) copyData() {
	for i, src := range f.src {
		e := &f.entries[i]
		dst := f.data[e.Begin:e.End]
		if littleEndian {
			// In chunks: one memmove is not preemptible, and a copy of
			// many megabytes would delay the GC's stop-the-world phases
			// for the training loop's goroutines.
			b := f32Bytes(src)
			for off := 0; off < len(b); off += copyChunk {
				copy(dst[off:], b[off:min(off+copyChunk, len(b))])
			}
		} else {
			for j, v := range src {
				binary.LittleEndian.PutUint32(dst[4*j:], math.Float32bits(v))
			}
		}
		f.src[i] = nil
	}
}

// write writes the file (header, then data) to w, hashing each tensor on the
// way. It returns the file's size.
func (f *fileBuf) write(w io.Writer, meta [][2]string) (int64, error) {
	f.header = appendHeader(f.header[:0], meta, f.entries)
	if _, err := w.Write(f.header); err != nil {
		return 0, err
	}
	for i := range f.entries {
		e := &f.entries[i]
		chunk := f.data[e.Begin:e.End]
		f.sums[i] = sha256.Sum256(chunk)
		if _, err := w.Write(chunk); err != nil {
			return 0, err
		}
	}
	return int64(len(f.header) + len(f.data)), nil
}

// index appends f's manifest entries (absolute offsets, hex sums) to dst;
// valid after write.
func (f *fileBuf) index(dst []TensorEntry) []TensorEntry {
	start := int64(len(f.header))
	for i, e := range f.entries {
		dst = append(dst, TensorEntry{
			File: f.name, Name: e.Name, DType: f32Name, Shape: e.Shape,
			Begin: start + e.Begin, End: start + e.End, SHA256: hex.EncodeToString(f.sums[i][:]),
		})
	}
	return dst
}

// snapshot is a State captured for writing: metadata copied, tensor data
// copied (or, between Begin and the writer goroutine's copy, borrowed).
type snapshot struct {
	job, configHash, precision string
	config                     string
	step, epoch, samplerEpoch  int
	samplerOffset, worldSize   int
	rng                        map[string]uint64
	scaler                     ScalerState
	files                      [2]fileBuf // ModelFile, OptimizerFile (or this shard's parts of them)
	sidecars                   []Sidecar  // copies
	shard                      ShardID
}

func (s *snapshot) init() {
	s.files[0].name = ModelFile
	s.files[1].name = OptimizerFile
	s.rng = make(map[string]uint64)
}

// capture validates st, copies its metadata and borrows its tensor data;
// copyData must follow before st's tensors change. In steady state (same
// tensor names and shapes as the previous save, same RNG keys) it does not
// allocate.
func (s *snapshot) capture(st *State) error {
	if err := st.validateMeta(); err != nil {
		return err
	}
	if st.Shard != s.shard {
		s.shard = st.Shard
		s.files[0].name, s.files[1].name = ModelFile, OptimizerFile
		if s.shard.sharded() {
			s.files[0].name = shardFile(ModelFile, s.shard.Index, s.shard.Count)
			s.files[1].name = shardFile(OptimizerFile, s.shard.Index, s.shard.Count)
		}
	}
	for i, ts := range [2][]Tensor{st.Params, st.Optim} {
		f := &s.files[i]
		if !f.matches(ts) {
			if err := f.relayout(st, ts); err != nil {
				return err
			}
		}
	}
	for i, ts := range [2][]Tensor{st.Params, st.Optim} {
		s.files[i].borrow(ts)
	}
	s.job, s.configHash, s.precision, s.config = st.Job, st.ConfigHash, st.Precision, st.Config
	s.step, s.epoch, s.samplerEpoch, s.samplerOffset, s.worldSize = st.Step, st.Epoch, st.SamplerEpoch, st.SamplerOffset, st.WorldSize
	s.scaler = st.Scaler
	s.sidecars = s.sidecars[:0]
	for _, f := range st.Sidecars {
		s.sidecars = append(s.sidecars, Sidecar{Name: f.Name, Data: append([]byte(nil), f.Data...)})
	}
	clear(s.rng)
	for k, v := range st.RNG {
		s.rng[k] = v
	}
	return nil
}

// copyData copies every borrowed tensor into the snapshot's buffers.
func (s *snapshot) copyData() {
	s.files[0].copyData()
	s.files[1].copyData()
}

// manifest builds the manifest once both files have been written.
func (s *snapshot) manifest(created time.Time, sizes [2]int64) *Manifest {
	m := &Manifest{
		FormatVersion: FormatVersion, Job: s.job, ConfigHash: s.configHash, Config: s.config,
		Step: s.step, Epoch: s.epoch,
		Sampler: SamplerPosition{Epoch: s.samplerEpoch, Offset: s.samplerOffset},
		RNG:     make(map[string]uint64, len(s.rng)),
		Scaler:  s.scaler, Precision: s.precision, WorldSize: s.worldSize,
		Created: created.UTC(),
	}
	for k, v := range s.rng {
		m.RNG[k] = v
	}
	for i := range s.files {
		m.Files = append(m.Files, FileEntry{Name: s.files[i].name, Size: sizes[i]})
		m.Tensors = s.files[i].index(m.Tensors)
	}
	for _, f := range s.sidecars {
		sum := sha256.Sum256(f.Data)
		m.Sidecars = append(m.Sidecars, SidecarEntry{Name: f.Name, Size: int64(len(f.Data)), SHA256: hex.EncodeToString(sum[:])})
	}
	if s.shard.sharded() {
		m.FormatVersion = ShardedFormatVersion
		m.Shards, m.Attempt, m.Part = s.shard.Count, s.shard.Attempt, s.shard.Index+1
	}
	return m
}

// fileMeta is the safetensors "__metadata__" of file f.
func (s *snapshot) fileMeta(f *fileBuf) [][2]string {
	meta := [][2]string{
		{"format", "pt"},
		{"loom.job", s.job},
		{"loom.step", fmt.Sprint(s.step)},
		{"loom.content", f.name},
	}
	if s.shard.sharded() {
		meta = append(meta, [2]string{"loom.attempt", s.shard.Attempt})
	}
	return meta
}
