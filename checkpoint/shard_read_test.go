package checkpoint

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// requireTensorNames fails unless ts holds exactly names, in that order.
func requireTensorNames(t *testing.T, what string, ts []Tensor, names []string) {
	t.Helper()
	got := make([]string, len(ts))
	for i, x := range ts {
		got[i] = x.Name
	}
	if !slices.Equal(got, names) {
		t.Fatalf("%s: %v, want %v", what, got, names)
	}
}

// pick returns the tensors of ts that keep accepts, in order.
func pick(ts []Tensor, keep func(string) bool) []Tensor {
	var out []Tensor
	for _, x := range ts {
		if keep(x.Name) {
			out = append(out, x)
		}
	}
	return out
}

// TestLoadTensorsFilter: each stage of a new layout (three stages) loads
// exactly its parameters and their optimizer state, bit for bit, from a
// checkpoint of another layout (four shards) and from an unsharded one
// (plain data parallelism), with every common field; and LatestTensors
// does the same.
func TestLoadTensorsFilter(t *testing.T) {
	root := t.TempDir()
	s := gptState("j", 40, 6, 8)
	requireNoErrors(t, saveShardsConcurrently(t, shardWriters(t, root, 4, DefaultConfig(), nil), splitByNames(s, stageNames(6, 4), "1")))
	st, _ := NewLocalStorage(root)
	plain := *s
	plain.Job = "dp"
	saveSync(t, newTestWriter(t, st, 0, nil), &plain)

	for _, path := range []string{StepDir("j", 40), StepDir("dp", 40)} {
		for k, names := range stageNames(6, 3) {
			keep := KeepParams(names...)
			got, err := LoadTensors(testCtx(t), st, path, keep)
			if err != nil {
				t.Fatal(err)
			}
			want := *s
			want.Job = got.Job
			want.Params, want.Optim = pick(s.Params, keep), pick(s.Optim, keep)
			requireEqualState(t, &want, got)
			requireTensorNames(t, fmt.Sprintf("%s stage %d params", path, k), got.Params, names)
			if len(got.Optim) != 2*len(names) {
				t.Fatalf("%s stage %d: %d optimizer tensors for %d parameters", path, k, len(got.Optim), len(names))
			}
		}
	}
	keep := KeepParams(stageNames(6, 3)[1]...)
	got, info, err := LatestTensors(testCtx(t), st, "j", nil, keep, nil)
	if err != nil || info.Path != StepDir("j", 40) || info.Shards != 4 {
		t.Fatalf("LatestTensors: %+v, %v", info, err)
	}
	requireTensorNames(t, "LatestTensors params", got.Params, stageNames(6, 3)[1])
	// Nothing kept is a valid request: the common fields alone.
	got, err = LoadTensors(testCtx(t), st, StepDir("j", 40), func(string) bool { return false })
	if err != nil || len(got.Params)+len(got.Optim) != 0 || got.Step != 40 || got.SamplerOffset != 99 {
		t.Fatalf("keep nothing: %+v, %v", got, err)
	}
}

// TestLoadTensorsReadsOnlyKept: a stage's filtered load reads its own
// tensors' bytes and little else, from a sharded and from an unsharded
// checkpoint (where it seeks past the other stages' tensors).
func TestLoadTensorsReadsOnlyKept(t *testing.T) {
	root := t.TempDir()
	s := gptState("j", 1, 4, 256) // each layer's matrices and their state: 1.5 MiB
	requireNoErrors(t, saveShardsConcurrently(t, shardWriters(t, root, 4, DefaultConfig(), nil), splitByNames(s, stageNames(4, 4), "1")))
	local, _ := NewLocalStorage(root)
	plain := *s
	plain.Job = "dp"
	saveSync(t, newTestWriter(t, local, 0, nil), &plain)

	keep := KeepParams(stageNames(4, 4)[2]...)
	var kept, all int64
	for _, ts := range [][]Tensor{s.Params, s.Optim} {
		for _, x := range ts {
			all += 4 * int64(len(x.Data))
			if keep(x.Name) {
				kept += 4 * int64(len(x.Data))
			}
		}
	}
	for _, job := range []string{"j", "dp"} {
		cs := &countingStorage{Storage: local, suffix: ".safetensors"}
		got, err := LoadTensors(testCtx(t), cs, StepDir(job, 1), keep)
		if err != nil {
			t.Fatal(err)
		}
		requireTensorNames(t, job, got.Params, stageNames(4, 4)[2])
		if read := cs.read.Load(); read < kept || read > kept+1<<20 {
			t.Fatalf("%s: read %d bytes of tensor files to load %d (all tensors: %d)", job, read, kept, all)
		}
		cs.read.Store(0)
		if _, err := Load(testCtx(t), cs, StepDir(job, 1)); err != nil {
			t.Fatal(err)
		}
		if read := cs.read.Load(); read < all {
			t.Fatalf("%s: a full load read %d bytes, the tensors hold %d", job, read, all)
		}
	}
}

// shardedCorruptSetup publishes steps 10 and 20 of job "j" in four shards
// and returns step 10's state.
func shardedCorruptSetup(t *testing.T, st *LocalStorage) *State {
	t.Helper()
	ws := shardWriters(t, st.Root(), 4, DefaultConfig(), nil)
	older := gptState("j", 10, 4, 8)
	requireNoErrors(t, saveShardsConcurrently(t, ws, splitByNames(older, stageNames(4, 4), "1")))
	requireNoErrors(t, saveShardsConcurrently(t, ws, splitByNames(gptState("j", 20, 4, 8), stageNames(4, 4), "1")))
	return older
}

// TestShardCorrupt: damage to one file of a sharded checkpoint is named
// (the file) by Load and by Latest's warning, and Latest falls back to the
// older checkpoint. A filtered load that keeps none of the damaged file's
// tensors still sees a truncated, missing or replaced file.
func TestShardCorrupt(t *testing.T) {
	const dir = "j/step-00000020"
	cases := []struct {
		file    string
		damage  func(b []byte) []byte
		mention string
	}{
		{"model-00003-of-00004.safetensors", func(b []byte) []byte { b[len(b)-5] ^= 1; return b }, "sha256"},
		{"optimizer-00002-of-00004.safetensors", func(b []byte) []byte { return b[:len(b)-4] }, "truncated"},
		{"model-00004-of-00004.safetensors", nil, "missing"},
		{"manifest-00002-of-00004.json", func(b []byte) []byte { return append(b, ' ') }, "manifest says"},
		{HFIndexFile, func(b []byte) []byte { b[10] ^= 1; return b }, "sha256"},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			st, _ := NewLocalStorage(t.TempDir())
			older := shardedCorruptSetup(t, st)
			name := dir + "/" + c.file
			if c.damage == nil {
				if err := st.RemoveAll(testCtx(t), name); err != nil {
					t.Fatal(err)
				}
			} else {
				writeAll(t, st, name, c.damage(readAll(t, st, name)))
			}
			_, err := Load(testCtx(t), st, dir)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("Load: %v; want ErrCorrupt naming %s and %q", err, name, c.mention)
			}
			log, logs := observed()
			got, info, err := Latest(testCtx(t), st, "j", nil, log)
			if err != nil || info.Step != 10 {
				t.Fatalf("Latest = %+v, %v; want step 10", info, err)
			}
			requireEqualState(t, older, got)
			if !warned(logs, name) {
				t.Fatalf("no warning names %s: %v", name, logs.All())
			}
			// Stage 0's filtered load: the damage is outside its
			// tensors; only a flipped data byte goes unseen.
			_, err = LoadTensors(testCtx(t), st, dir, KeepParams(stageNames(4, 4)[0]...))
			if c.mention == "sha256" && strings.HasPrefix(c.file, "model-") {
				if err != nil {
					t.Fatalf("stage 0's load fails on another stage's data: %v", err)
				}
			} else if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) {
				t.Fatalf("stage 0's load: %v; want ErrCorrupt naming %s", err, name)
			}
		})
	}
}

// TestShardedManifestVersion: a sharded manifest says format version 2 so
// that a reader of version 1 only refuses it as a newer version; a version
// 1 manifest that lists shard files, or a version 2 one that lacks a
// shard's files, is corrupt.
func TestShardedManifestVersion(t *testing.T) {
	good := &Manifest{FormatVersion: ShardedFormatVersion, Job: "j", Step: 1, Shards: 2, Attempt: "1", Scaler: ScalerState{Scale: 1}}
	for i := range 2 {
		good.Files = append(good.Files, FileEntry{Name: shardFile(ModelFile, i, 2), Size: 100}, FileEntry{Name: shardFile(OptimizerFile, i, 2), Size: 100})
		good.Indexes = append(good.Indexes, SidecarEntry{Name: shardFile(ManifestFile, i, 2), SHA256: strings.Repeat("0", 64)})
	}
	good.Indexes = append(good.Indexes, SidecarEntry{Name: HFIndexFile, SHA256: strings.Repeat("0", 64)})
	good.Tensors = []TensorEntry{tensorAt(good.Files[0].Name, "x"), tensorAt(good.Files[1].Name, "x")} // a parameter and a state may share a name
	if err := good.check("j/step-00000001", "j", 1); err != nil {
		t.Fatal(err)
	}
	for what, mutate := range map[string]func(m *Manifest){
		"v1 with shard files": func(m *Manifest) { m.FormatVersion = FormatVersion },
		"a shard's file less": func(m *Manifest) { m.Files = m.Files[:3] },
		"index less":          func(m *Manifest) { m.Indexes = m.Indexes[1:] },
		"one shard":           func(m *Manifest) { m.Shards = 1 },
		"no attempt":          func(m *Manifest) { m.Attempt = "" },
		"part in top":         func(m *Manifest) { m.Part = 1 },
		"duplicate across": func(m *Manifest) {
			m.Tensors = []TensorEntry{tensorAt(m.Files[0].Name, "x"), tensorAt(m.Files[2].Name, "x")}
		},
	} {
		m := *good
		m.Files = slices.Clone(good.Files)
		m.Indexes = slices.Clone(good.Indexes)
		mutate(&m)
		if err := m.check("j/step-00000001", "j", 1); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", what, err)
		}
	}
	m := *good
	m.FormatVersion = 3
	if err := m.check("j/step-00000001", "j", 1); !errors.Is(err, ErrVersion) {
		t.Errorf("version 3: %v, want ErrVersion", err)
	}
}

func tensorAt(file, name string) TensorEntry {
	return TensorEntry{File: file, Name: name, DType: f32Name, Shape: []int{}, Begin: 0, End: 4, SHA256: strings.Repeat("0", 64)}
}
