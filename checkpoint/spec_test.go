package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"sort"
	"testing"
)

// specTensor is one tensor as a safetensors reader sees it.
type specTensor struct {
	dtype  string
	shape  []int
	begin  int // absolute offsets in the file
	end    int
	values []float32
}

// parseSafetensors reads a safetensors file by the format's specification,
// without any of this package's code: u64 little-endian header size N, N
// bytes of UTF-8 JSON (an object of name → {dtype, shape, data_offsets} plus
// an optional "__metadata__" string→string map), then the byte buffer, with
// data_offsets relative to it. It enforces the rules of the reference
// implementation: offsets ordered, contiguous, covering the whole buffer,
// each tensor's size equal to shape × dtype size; and the spec's
// recommendation that the buffer start 8-byte aligned with the header padded
// by spaces.
func parseSafetensors(t *testing.T, file []byte) (map[string]specTensor, map[string]string) {
	t.Helper()
	if len(file) < 8 {
		t.Fatalf("file of %d bytes", len(file))
	}
	n := int(binary.LittleEndian.Uint64(file[:8]))
	if 8+n > len(file) {
		t.Fatalf("header size %d beyond file of %d bytes", n, len(file))
	}
	header := file[8 : 8+n]
	if (8+n)%8 != 0 {
		t.Errorf("data starts at %d, not 8-byte aligned", 8+n)
	}
	trimmed := bytes.TrimRight(header, " ")
	if len(header)-len(trimmed) >= 8 || trimmed[len(trimmed)-1] != '}' || header[0] != '{' {
		t.Errorf("header is not a JSON object padded with fewer than 8 spaces: %q", header)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		t.Fatalf("header is not JSON: %v", err)
	}
	meta := map[string]string{}
	if m, ok := raw["__metadata__"]; ok {
		if err := json.Unmarshal(m, &meta); err != nil {
			t.Fatalf("__metadata__ is not a string map: %v", err)
		}
		delete(raw, "__metadata__")
	}
	buf := file[8+n:]
	type span struct {
		name       string
		begin, end int
	}
	var spans []span
	out := map[string]specTensor{}
	for name, v := range raw {
		var e struct {
			DType       string `json:"dtype"`
			Shape       []int  `json:"shape"`
			DataOffsets []int  `json:"data_offsets"`
		}
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("tensor %q: %v", name, err)
		}
		if e.DType != "F32" || len(e.DataOffsets) != 2 || e.Shape == nil {
			t.Fatalf("tensor %q: dtype %q shape %v offsets %v", name, e.DType, e.Shape, e.DataOffsets)
		}
		elems := 1
		for _, d := range e.Shape {
			elems *= d
		}
		b, en := e.DataOffsets[0], e.DataOffsets[1]
		if en-b != 4*elems || b < 0 || en > len(buf) {
			t.Fatalf("tensor %q: offsets [%d, %d) for %d F32 values in a buffer of %d", name, b, en, elems, len(buf))
		}
		vals := make([]float32, elems)
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[b+4*i:]))
		}
		out[name] = specTensor{dtype: e.DType, shape: e.Shape, begin: 8 + n + b, end: 8 + n + en, values: vals}
		spans = append(spans, span{name, b, en})
	}
	sort.Slice(spans, func(i, j int) bool { // by (begin, end): empty tensors share a begin
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	pos := 0
	for _, s := range spans {
		if s.begin != pos {
			t.Fatalf("tensor %q starts at %d, expected %d (gap or overlap)", s.name, s.begin, pos)
		}
		pos = s.end
	}
	if pos != len(buf) {
		t.Fatalf("tensors cover %d of %d buffer bytes", pos, len(buf))
	}
	return out, meta
}

// TestSafetensorsSpec parses the written files by the spec alone and checks
// every tensor, the metadata, and the manifest's offsets and checksums.
func TestSafetensorsSpec(t *testing.T) {
	st := NewMemStorage()
	w := newTestWriter(t, st, 0, nil)
	s := testState("spec", 7)
	s.Params = append(s.Params, Tensor{Name: `we"ird/näme\x`, Shape: []int{2, 1, 3}, Data: []float32{1, 2, 3, 4, 5, 6}})
	saveSync(t, w, s)

	var m map[string]any // the manifest, read as plain JSON
	var idx struct {
		Tensors []struct {
			File, Name, SHA256 string
			Begin, End         int
		} `json:"tensors"`
	}
	mb := readAll(t, st, "spec/step-00000007/"+ManifestFile)
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mb, &idx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"format_version", "job", "config_hash", "step", "epoch", "sampler", "rng", "scaler", "precision", "world_size", "created", "files", "tensors"} {
		if _, ok := m[key]; !ok {
			t.Errorf("manifest lacks %q", key)
		}
	}

	files := map[string][]Tensor{ModelFile: s.Params, OptimizerFile: s.Optim}
	indexed := 0
	for fname, want := range files {
		file := readAll(t, st, "spec/step-00000007/"+fname)
		got, meta := parseSafetensors(t, file)
		if meta["format"] != "pt" || meta["loom.job"] != "spec" || meta["loom.step"] != "7" {
			t.Errorf("%s metadata %v", fname, meta)
		}
		if len(got) != len(want) {
			t.Fatalf("%s holds %d tensors, want %d", fname, len(got), len(want))
		}
		for _, wt := range want {
			g, ok := got[wt.Name]
			if !ok {
				t.Fatalf("%s lacks %q", fname, wt.Name)
			}
			requireEqualTensors(t, fname, []Tensor{wt}, []Tensor{{Name: wt.Name, Shape: g.shape, Data: g.values}})
		}
		for _, e := range idx.Tensors {
			if e.File != fname {
				continue
			}
			indexed++
			g := got[e.Name]
			sum := sha256.Sum256(file[e.Begin:e.End])
			if e.Begin != g.begin || e.End != g.end || e.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("manifest entry %+v disagrees with the file (offsets [%d, %d), sha256 %x)", e, g.begin, g.end, sum)
			}
		}
	}
	if indexed != len(s.Params)+len(s.Optim) {
		t.Fatalf("manifest indexes %d tensors, want %d", indexed, len(s.Params)+len(s.Optim))
	}
}
