package checkpoint

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"

	"github.com/loomtrain/loom/tensor"
)

// maxHeaderBytes bounds the JSON header a reader accepts (the safetensors
// reference implementation's limit), so a corrupt length cannot make Load
// allocate gigabytes.
const maxHeaderBytes = 100 << 20

// stEntry is one tensor of a safetensors file. Begin and End are relative to
// the start of the data section, as in the header's data_offsets.
type stEntry struct {
	Name       string
	Shape      []int
	Begin, End int64
}

// appendHeader appends the 8-byte little-endian header length and the JSON
// header for entries (all F32) to dst, padding the JSON with spaces so that
// the data section starts at a multiple of 8 bytes. meta holds key/value
// pairs for "__metadata__" (safetensors allows only string values). Keys are
// written in the order given: entries in data order, so the file reads
// naturally; readers must not depend on key order.
func appendHeader(dst []byte, meta [][2]string, entries []stEntry) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	dst = append(dst, `{"__metadata__":{`...)
	for i, kv := range meta {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, kv[0])
		dst = append(dst, ':')
		dst = appendJSONString(dst, kv[1])
	}
	dst = append(dst, '}')
	for _, e := range entries {
		dst = append(dst, ',')
		dst = appendJSONString(dst, e.Name)
		dst = append(dst, `:{"dtype":"`...)
		dst = append(dst, f32Name...)
		dst = append(dst, `","shape":[`...)
		for j, d := range e.Shape {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendInt(dst, int64(d), 10)
		}
		dst = append(dst, `],"data_offsets":[`...)
		dst = strconv.AppendInt(dst, e.Begin, 10)
		dst = append(dst, ',')
		dst = strconv.AppendInt(dst, e.End, 10)
		dst = append(dst, "]}"...)
	}
	dst = append(dst, '}')
	for (len(dst)-start)%8 != 0 {
		dst = append(dst, ' ')
	}
	binary.LittleEndian.PutUint64(dst[start:], uint64(len(dst)-start-8))
	return dst
}

// appendJSONString appends s as a JSON string literal. encoding/json's
// escaping (including of <, > and &) is valid JSON for every reader.
func appendJSONString(dst []byte, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil { // unreachable: strings always marshal
		panic(err)
	}
	return append(dst, b...)
}

// stHeader is a parsed safetensors header.
type stHeader struct {
	// DataStart is the absolute offset of the data section: 8 + header length.
	DataStart int64
	Meta      map[string]string
	Tensors   map[string]stTensor
}

type stTensor struct {
	DType       string  `json:"dtype"`
	Shape       []int   `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// readHeader reads and parses the header of a safetensors file of size bytes
// from r, leaving r at the start of the data section. It checks what the
// format itself requires: a header that fits the file, valid JSON, string
// metadata, and offsets that lie within the data section. Errors wrap
// ErrCorrupt and name path.
func readHeader(r io.Reader, size int64, path string) (*stHeader, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: safetensors header: %s", ErrCorrupt, path, fmt.Sprintf(format, a...))
	}
	var lenBuf [8]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return nil, bad("reading length: %v", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeaderBytes || int64(n) > size-8 {
		return nil, bad("length %d does not fit a file of %d bytes", n, size)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, bad("reading %d bytes: %v", n, err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, bad("%v", err)
	}
	h := &stHeader{DataStart: 8 + int64(n), Tensors: make(map[string]stTensor, len(fields))}
	dataLen := size - h.DataStart
	for name, v := range fields {
		if name == "__metadata__" {
			if err := json.Unmarshal(v, &h.Meta); err != nil {
				return nil, bad("__metadata__: %v", err)
			}
			continue
		}
		var t stTensor
		if err := json.Unmarshal(v, &t); err != nil {
			return nil, bad("tensor %q: %v", name, err)
		}
		if len(t.DataOffsets) != 2 || t.DataOffsets[0] < 0 || t.DataOffsets[0] > t.DataOffsets[1] || t.DataOffsets[1] > dataLen {
			return nil, bad("tensor %q: data_offsets %v outside a data section of %d bytes", name, t.DataOffsets, dataLen)
		}
		h.Tensors[name] = t
	}
	return h, nil
}

// matchHeader checks that the parsed header h of file describes exactly the
// manifest's tensors of that file, at the manifest's absolute offsets.
func matchHeader(h *stHeader, file string, index []TensorEntry, path string) error {
	count := 0
	for _, e := range index {
		if e.File != file {
			continue
		}
		count++
		t, ok := h.Tensors[e.Name]
		if !ok {
			return fmt.Errorf("%w: %s: tensor %q is in the manifest but not in the file header", ErrCorrupt, path, e.Name)
		}
		if t.DType != e.DType || !equalInts(t.Shape, e.Shape) ||
			h.DataStart+t.DataOffsets[0] != e.Begin || h.DataStart+t.DataOffsets[1] != e.End {
			return fmt.Errorf("%w: %s: tensor %q: header says %s %v at [%d, %d), manifest says %s %v at [%d, %d)",
				ErrCorrupt, path, e.Name, t.DType, t.Shape, h.DataStart+t.DataOffsets[0], h.DataStart+t.DataOffsets[1],
				e.DType, e.Shape, e.Begin, e.End)
		}
	}
	if count != len(h.Tensors) {
		return fmt.Errorf("%w: %s: header lists %d tensors, manifest %d", ErrCorrupt, path, len(h.Tensors), count)
	}
	return nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ReadSafetensors reads every tensor of a safetensors file written by any
// tool (a Hugging Face model.safetensors, say), widening F16 and BF16 to
// float32, in the file's data order. Other dtypes, overlapping tensors and
// sizes that disagree with shapes are refused naming the tensor.
func ReadSafetensors(path string) ([]Tensor, map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	r := bufio.NewReaderSize(f, 256<<10)
	h, err := readHeader(r, st.Size(), path)
	if err != nil {
		return nil, nil, err
	}
	names := make([]string, 0, len(h.Tensors))
	for name := range h.Tensors {
		names = append(names, name)
	}
	sort.Slice(names, func(a, b int) bool {
		return h.Tensors[names[a]].DataOffsets[0] < h.Tensors[names[b]].DataOffsets[0]
	})
	out := make([]Tensor, 0, len(names))
	pos := int64(0)
	var raw []byte
	for _, name := range names {
		t := h.Tensors[name]
		n, ok := numel(t.Shape)
		if !ok {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q has invalid shape %v", ErrCorrupt, path, name, t.Shape)
		}
		width := map[string]int{f32Name: 4, "F16": 2, "BF16": 2}[t.DType]
		if width == 0 {
			return nil, nil, fmt.Errorf("%s: tensor %q has dtype %s; loom reads F32, F16 and BF16", path, name, t.DType)
		}
		begin, end := t.DataOffsets[0], t.DataOffsets[1]
		if end-begin != int64(width*n) {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q: %d bytes for %s %v", ErrCorrupt, path, name, end-begin, t.DType, t.Shape)
		}
		if begin < pos {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q overlaps the previous one", ErrCorrupt, path, name)
		}
		if _, err := r.Discard(int(begin - pos)); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q: %v", ErrCorrupt, path, name, err)
		}
		raw = slices.Grow(raw[:0], int(end-begin))[:end-begin]
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: tensor %q at data offset %d: %v", ErrCorrupt, path, name, begin, err)
		}
		data := make([]float32, n)
		for i := range data {
			switch t.DType {
			case f32Name:
				data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			case "BF16":
				data[i] = tensor.FromBF16(binary.LittleEndian.Uint16(raw[2*i:]))
			default:
				data[i] = tensor.FromF16(binary.LittleEndian.Uint16(raw[2*i:]))
			}
		}
		out = append(out, Tensor{Name: name, Shape: t.Shape, Data: data})
		pos = end
	}
	return out, h.Meta, nil
}
