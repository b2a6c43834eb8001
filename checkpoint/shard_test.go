package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestShardedEqualsUnsharded: four Writers (each over its own LocalStorage
// on one root, as four processes) write their shards at once; the
// checkpoint Load returns equals the State written unsharded, bit for bit,
// and so does the unsharded checkpoint of it. Exactly one Writer reports
// it published, the three others that their shard is written. Repeated
// over several steps, so that the completion race runs several times.
func TestShardedEqualsUnsharded(t *testing.T) {
	root := t.TempDir()
	var rec shardRecorder
	ws := shardWriters(t, root, 4, rec.config(0), nil)
	st, _ := NewLocalStorage(root)
	plain := newTestWriter(t, st, 0, nil)
	for _, step := range []int{10, 20, 30, 40, 50} {
		want := testState("j", step)
		want.Sidecars = []Sidecar{{Name: "config.json", Data: []byte(`{"n_layer": 2}`)}}
		requireNoErrors(t, saveShardsConcurrently(t, ws, splitEven(want, 4, "7")))
		got, err := Load(testCtx(t), st, StepDir("j", step))
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, want, got)
		if got.Shard != (ShardID{}) || len(got.Sidecars) != 1 || string(got.Sidecars[0].Data) != `{"n_layer": 2}` {
			t.Fatalf("step %d: Shard %+v, sidecars %+v", step, got.Shard, got.Sidecars)
		}
		if p, w, f := rec.counts(step); p != 1 || w != 3 || f != 0 {
			t.Fatalf("step %d: %d published, %d shard-written, %d failed callbacks; want 1, 3, 0", step, p, w, f)
		}

		// The same state unsharded, as plain data parallelism writes it.
		wantPlain := testState("u", step)
		saveSync(t, plain, wantPlain)
		gotPlain, err := Load(testCtx(t), st, StepDir("u", step))
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, gotPlain, func() *State { g := *got; g.Job = "u"; return &g }())
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, si := range rec.written {
		if si.Path != StepDir("j", si.Step) || si.Shard.Count != 4 || si.Bytes <= 0 || !strings.Contains(si.Staging, ".tmp-step-") {
			t.Fatalf("shard info %+v", si)
		}
	}
	for _, info := range rec.published {
		if info.Shards != 4 || info.Path != StepDir("j", info.Step) || len(info.ManifestSHA256) != 64 {
			t.Fatalf("published info %+v", info)
		}
		// Bytes: every file of the directory but the sidecars.
		var total int64
		entries, _ := os.ReadDir(filepath.Join(root, filepath.FromSlash(info.Path)))
		for _, e := range entries {
			fi, _ := e.Info()
			if e.Name() != "config.json" {
				total += fi.Size()
			}
		}
		if info.Bytes != total {
			t.Fatalf("%s: Info.Bytes %d, files hold %d", info.Path, info.Bytes, total)
		}
	}
}

// TestShardClaimRace: every shard lists the staging directory only once
// all four are written, so all four see the checkpoint complete and race
// to publish it; exactly one does, the others report AllPresent.
func TestShardClaimRace(t *testing.T) {
	root := t.TempDir()
	var rec shardRecorder
	b := newBarrier(4)
	ws := shardWriters(t, root, 4, rec.config(0), func(s Storage) Storage { return &barrierStorage{s, b} })
	want := gptState("j", 5, 4, 8)
	requireNoErrors(t, saveShardsConcurrently(t, ws, splitByNames(want, stageNames(4, 4), "1")))
	if p, w, f := rec.counts(5); p != 1 || w != 3 || f != 0 {
		t.Fatalf("%d published, %d shard-written, %d failed; want 1, 3, 0", p, w, f)
	}
	for _, si := range rec.written {
		if !si.AllPresent {
			t.Fatalf("shard %d lost the race but reports AllPresent false", si.Shard.Index)
		}
	}
	st, _ := NewLocalStorage(root)
	got, err := Load(testCtx(t), st, StepDir("j", 5))
	if err != nil {
		t.Fatal(err)
	}
	requireEqualState(t, want, got)
	if names, _ := st.List(testCtx(t), "j"); !reflect.DeepEqual(names, []string{"step-00000005"}) {
		t.Fatalf("job directory holds %v", names)
	}
}

// TestShardLateClaimAfterPublish: a shard that saw every shard present
// just before another published the checkpoint finds the staging
// directory gone when it claims: it reports its shard written, no error,
// and the published checkpoint is untouched.
func TestShardLateClaimAfterPublish(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		want := testState("j", 3)
		shards := splitEven(want, 2, "4")
		staging := shardStaging("j", 3, shards[0].Shard)
		w0 := newTestWriter(t, st, 0, nil)
		saveSync(t, w0, shards[0])
		names, err := st.List(testCtx(t), staging)
		if err != nil || len(names) == 0 {
			t.Fatalf("staging holds %v, %v", names, err)
		}
		saveSync(t, newTestWriter(t, st, 0, nil), shards[1]) // completes and publishes
		before := readAll(t, st, StepDir("j", 3)+"/"+ManifestFile)

		late := newTestWriter(t, &staleListStorage{Storage: st, dir: staging,
			names: append(names, shardFile(ManifestFile, 1, 2))}, 0, nil)
		if err := late.snap.capture(shards[0]); err != nil {
			t.Fatal(err)
		}
		info, how, err := late.complete(testCtx(t), staging, StepDir("j", 3))
		if err != nil || how != completed || info.Path != "" {
			t.Fatalf("late claim: %+v, %v, %v; want completed by another, no error", info, how, err)
		}
		if after := readAll(t, st, StepDir("j", 3)+"/"+ManifestFile); string(after) != string(before) {
			t.Fatal("a late claim changed the published checkpoint")
		}
		got, err := Load(testCtx(t), st, StepDir("j", 3))
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, want, got)
		if names, _ := st.List(testCtx(t), "j"); !reflect.DeepEqual(names, []string{"step-00000003"}) {
			t.Fatalf("job directory holds %v", names)
		}
	})
}

// TestShardMissing: with one shard of step 20 never written, nothing of
// step 20 is published, nobody reports it published, and Latest resumes
// from step 10, naming the unfinished staging directory in a warning.
func TestShardMissing(t *testing.T) {
	root := t.TempDir()
	var rec shardRecorder
	ws := shardWriters(t, root, 4, rec.config(0), nil)
	older := testState("j", 10)
	requireNoErrors(t, saveShardsConcurrently(t, ws, splitEven(older, 4, "1")))
	requireNoErrors(t, saveShardsConcurrently(t, ws[:3], splitEven(testState("j", 20), 4, "1")[:3]))
	if p, w, f := rec.counts(20); p != 0 || w != 3 || f != 0 {
		t.Fatalf("torn step 20: %d published, %d shard-written, %d failed; want 0, 3, 0", p, w, f)
	}
	for _, si := range rec.written {
		if si.Step == 20 && si.AllPresent {
			t.Fatalf("shard %d of a torn checkpoint reports AllPresent", si.Shard.Index)
		}
	}
	st, _ := NewLocalStorage(root)
	log, logs := observed()
	got, info, err := Latest(testCtx(t), st, "j", nil, log)
	if err != nil || info.Step != 10 {
		t.Fatalf("Latest = %+v, %v; want step 10", info, err)
	}
	requireEqualState(t, older, got)
	staging := shardStaging("j", 20, ShardID{Count: 4, Attempt: "1"})
	if !warned(logs, staging) {
		t.Fatalf("no warning names %s: %v", staging, logs.All())
	}
	if list, _ := List(testCtx(t), st, "j"); len(list) != 1 || list[0].Step != 10 || list[0].Shards != 4 {
		t.Fatalf("List = %+v, want only step 10 (4 shards)", list)
	}
	if _, err := Load(testCtx(t), st, StepDir("j", 20)); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Load of the torn step: %v, want ErrIncomplete", err)
	}
}

// TestShardAttemptsDoNotMix: an attempt of step 30 with four shards that
// lost a shard, then another attempt of step 30 with two: the second is
// published from its own two shards only, and the first's files stay in
// their own staging directory.
func TestShardAttemptsDoNotMix(t *testing.T) {
	root := t.TempDir()
	var rec shardRecorder
	ws := shardWriters(t, root, 4, rec.config(0), nil)
	first := testState("j", 30)
	first.Params[0].Data[3] = 111 // another layout's values: must not leak in
	requireNoErrors(t, saveShardsConcurrently(t, ws[:3], splitEven(first, 4, "5")[:3]))
	want := testState("j", 30)
	requireNoErrors(t, saveShardsConcurrently(t, ws[:2], splitEven(want, 2, "6")))

	st, _ := NewLocalStorage(root)
	got, err := Load(testCtx(t), st, StepDir("j", 30))
	if err != nil {
		t.Fatal(err)
	}
	requireEqualState(t, want, got)
	names, _ := st.List(testCtx(t), StepDir("j", 30))
	for _, n := range names {
		if strings.Contains(n, "-of-00004") {
			t.Fatalf("published step holds %s of the other attempt: %v", n, names)
		}
	}
	old := shardStaging("j", 30, ShardID{Count: 4, Attempt: "5"})
	if left, _ := st.List(testCtx(t), old); len(left) != 9 { // 3 × (model, optimizer, manifest)
		t.Fatalf("first attempt's staging holds %v", left)
	}
	if p, _, _ := rec.counts(30); p != 1 {
		t.Fatalf("%d published callbacks for step 30, want 1", p)
	}
}

// TestShardRetention: Keep 2 with four shards keeps the two newest
// checkpoints; the Writer that publishes removes leftovers of older steps
// and older attempts, never a staging directory that may be in progress:
// the next step's, or an older step's of a newer attempt.
func TestShardRetention(t *testing.T) {
	root := t.TempDir()
	var rec shardRecorder
	ws := shardWriters(t, root, 4, rec.config(2), nil)
	st, _ := NewLocalStorage(root)
	for _, step := range []int{10, 20, 30} {
		requireNoErrors(t, saveShardsConcurrently(t, ws, splitEven(testState("j", step), 4, "3")))
	}
	// Leftovers: a torn attempt of step 5 and one of step 30 of an
	// older attempt; an unsharded staging and a trash directory.
	// In progress: step 50's next checkpoint (two shards written), and
	// step 30 again under a newer attempt (a re-plan resumed from 20).
	others := shardWriters(t, root, 4, rec.config(2), nil)
	requireNoErrors(t, saveShardsInOrder(t, others[:1], splitEven(testState("j", 5), 4, "1")[:1]))
	requireNoErrors(t, saveShardsInOrder(t, others[:1], splitEven(testState("j", 30), 4, "2")[:1]))
	requireNoErrors(t, saveShardsInOrder(t, others[:1], splitEven(testState("j", 30), 2, "7")[:1]))
	requireNoErrors(t, saveShardsInOrder(t, others[:2], splitEven(testState("j", 50), 4, "3")[:2]))
	writeAll(t, st, "j/.tmp-step-00000001-crashed/"+ModelFile, []byte("x"))
	writeAll(t, st, "j/.trash-step-00000002-x/"+ModelFile, []byte("x"))

	requireNoErrors(t, saveShardsConcurrently(t, ws, splitEven(testState("j", 40), 4, "3")))
	names, _ := st.List(testCtx(t), "j")
	want := []string{
		".tmp-step-00000030-of-00002-7", // a newer attempt, maybe in progress
		".tmp-step-00000050-of-00004-3", // the next checkpoint, in progress
		"step-00000030", "step-00000040",
	}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("after publishing step 40 with Keep 2 the job holds\n%v\nwant\n%v", names, want)
	}

	// The in-progress checkpoint completes from the staging directory
	// retention kept.
	want50 := testState("j", 50)
	requireNoErrors(t, saveShardsConcurrently(t, ws[2:], splitEven(want50, 4, "3")[2:]))
	got, err := Load(testCtx(t), st, StepDir("j", 50))
	if err != nil {
		t.Fatal(err)
	}
	requireEqualState(t, want50, got)
	names, _ = st.List(testCtx(t), "j")
	if !reflect.DeepEqual(names, []string{".tmp-step-00000030-of-00002-7", "step-00000040", "step-00000050"}) {
		t.Fatalf("after step 50: %v", names)
	}
}

// TestShardHFIndex: model.safetensors.index.json is Hugging Face's index
// of the sharded model: every parameter mapped to the file that holds it
// (checked by parsing that file by the safetensors spec), total_size the
// bytes of all of them; manifest.json lists every file of the directory,
// and the directory holds nothing else.
func TestShardHFIndex(t *testing.T) {
	root := t.TempDir()
	ws := shardWriters(t, root, 4, DefaultConfig(), nil)
	s := gptState("gpt", 100, 6, 8)
	s.Sidecars = []Sidecar{{Name: "config.json", Data: []byte(`{"model_type": "gpt2"}`)}}
	requireNoErrors(t, saveShardsConcurrently(t, ws, splitByNames(s, stageNames(6, 4), "2")))
	st, _ := NewLocalStorage(root)
	dir := StepDir("gpt", 100)

	var idx struct {
		Metadata  map[string]json.RawMessage `json:"metadata"`
		WeightMap map[string]string          `json:"weight_map"`
	}
	if err := json.Unmarshal(readAll(t, st, dir+"/"+HFIndexFile), &idx); err != nil {
		t.Fatal(err)
	}
	var total int64
	if err := json.Unmarshal(idx.Metadata["total_size"], &total); err != nil {
		t.Fatalf("total_size %s: %v", idx.Metadata["total_size"], err)
	}
	if len(idx.WeightMap) != len(s.Params) {
		t.Fatalf("weight_map has %d tensors, the model %d", len(idx.WeightMap), len(s.Params))
	}
	parsed := map[string]map[string]specTensor{}
	var sum int64
	for _, p := range s.Params {
		file, ok := idx.WeightMap[p.Name]
		if !ok || !regexp.MustCompile(`^model-0000[1-4]-of-00004\.safetensors$`).MatchString(file) {
			t.Fatalf("weight_map[%q] = %q", p.Name, file)
		}
		if parsed[file] == nil {
			parsed[file], _ = parseSafetensors(t, readAll(t, st, dir+"/"+file))
		}
		g, ok := parsed[file][p.Name]
		if !ok {
			t.Fatalf("%s does not hold %s", file, p.Name)
		}
		requireEqualTensors(t, file, []Tensor{p}, []Tensor{{Name: p.Name, Shape: g.shape, Data: g.values}})
		sum += 4 * int64(len(p.Data))
	}
	if total != sum {
		t.Fatalf("total_size %d, the parameters hold %d bytes", total, sum)
	}
	// Stage 0's file holds the embeddings, the last stage's ln_f.
	if idx.WeightMap["wte.weight"] != "model-00001-of-00004.safetensors" || idx.WeightMap["ln_f.weight"] != "model-00004-of-00004.safetensors" {
		t.Fatalf("weight_map %v", idx.WeightMap)
	}

	var m Manifest
	if err := json.Unmarshal(readAll(t, st, dir+"/"+ManifestFile), &m); err != nil {
		t.Fatal(err)
	}
	listed := []string{ManifestFile}
	for _, f := range m.Files {
		listed = append(listed, f.Name)
	}
	for _, f := range append(m.Indexes, m.Sidecars...) {
		listed = append(listed, f.Name)
		if b := readAll(t, st, dir+"/"+f.Name); int64(len(b)) != f.Size || sha(b) != f.SHA256 {
			t.Fatalf("%s: size or sha256 differs from the manifest", f.Name)
		}
	}
	names, _ := st.List(testCtx(t), dir)
	slices.Sort(listed)
	if !reflect.DeepEqual(names, listed) {
		t.Fatalf("directory holds %v, manifest lists %v", names, listed)
	}
	if m.FormatVersion != ShardedFormatVersion || m.Shards != 4 || m.Attempt != "2" || m.Part != 0 || len(m.Indexes) != 5 {
		t.Fatalf("manifest version %d shards %d attempt %q part %d indexes %d", m.FormatVersion, m.Shards, m.Attempt, m.Part, len(m.Indexes))
	}
	// A shard file is a plain safetensors file for ReadSafetensors too.
	ts, meta, err := ReadSafetensors(filepath.Join(root, "gpt", "step-00000100", "model-00001-of-00004.safetensors"))
	if err != nil || len(ts) != 8 || ts[0].Name != "wte.weight" || meta["loom.attempt"] != "2" {
		t.Fatalf("ReadSafetensors: %d tensors, meta %v, %v", len(ts), meta, err)
	}
	// LoadDir reads the sharded directory whole.
	got, err := LoadDir(testCtx(t), filepath.Join(root, "gpt", "step-00000100"))
	if err != nil {
		t.Fatal(err)
	}
	requireEqualState(t, s, got)
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestShardInvalid: shard identities that cannot be written are refused by
// Save; shards that disagree on the common fields or hold one tensor
// twice fail the completing write, and nothing is published or left.
func TestShardInvalid(t *testing.T) {
	w := newTestWriter(t, NewMemStorage(), 0, nil)
	for _, id := range []ShardID{
		{Index: 0, Count: -1}, {Index: 1, Count: 1}, {Index: 1, Count: 0}, {Index: 4, Count: 4, Attempt: "1"},
		{Index: -1, Count: 4, Attempt: "1"}, {Index: 0, Count: 4}, {Index: 0, Count: 4, Attempt: "a/b"},
		{Index: 0, Count: MaxShards + 1, Attempt: "1"}, {Index: 0, Count: 2, Attempt: strings.Repeat("x", 65)},
	} {
		s := testState("j", 1)
		s.Shard = id
		if err := w.Save(testCtx(t), s); !errors.Is(err, ErrInvalidState) {
			t.Errorf("Save with %+v: %v, want ErrInvalidState", id, err)
		}
	}
	s := splitEven(testState("j", 1), 2, "1")[1]
	s.Sidecars = []Sidecar{{Name: "config.json", Data: []byte("{}")}}
	if err := w.Save(testCtx(t), s); !errors.Is(err, ErrInvalidState) {
		t.Errorf("sidecars on shard 1: %v, want ErrInvalidState", err)
	}
	for _, name := range []string{HFIndexFile, "model-00001-of-00002.safetensors", "manifest-00002-of-00002.json"} {
		s := testState("j", 1)
		s.Sidecars = []Sidecar{{Name: name}}
		if err := w.Save(testCtx(t), s); !errors.Is(err, ErrInvalidState) {
			t.Errorf("sidecar %q: %v, want ErrInvalidState", name, err)
		}
	}

	for what, mutate := range map[string]func(last *State){
		"epoch":     func(s *State) { s.Epoch++ },
		"rng":       func(s *State) { s.RNG = map[string]uint64{"data": 1} },
		"duplicate": func(s *State) { s.Params = append(s.Params, Tensor{Name: "l0.w", Shape: []int{1}, Data: []float32{1}}) },
	} {
		t.Run(what, func(t *testing.T) {
			root := t.TempDir()
			var rec shardRecorder
			ws := shardWriters(t, root, 3, rec.config(0), nil)
			shards := splitEven(testState("j", 9), 3, "1")
			mutate(shards[2])
			errs := saveShardsInOrder(t, ws, shards)
			if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], ErrWrite) || !errors.Is(errs[2], ErrInvalidState) {
				t.Fatalf("errors %v; want the completing shard's write to fail with ErrInvalidState", errs)
			}
			if p, _, f := rec.counts(9); p != 0 || f != 1 {
				t.Fatalf("%d published, %d failed", p, f)
			}
			st, _ := NewLocalStorage(root)
			if names, _ := st.List(testCtx(t), "j"); len(names) != 0 {
				t.Fatalf("a failed completion left %v", names)
			}
		})
	}
}

// TestUnshardedBytesPinned: an unsharded checkpoint is what it was before
// sharding existed, byte for byte (the sums were taken from the writer of
// then), and ShardID{Count: 1} with an attempt writes the same bytes.
func TestUnshardedBytesPinned(t *testing.T) {
	pinned := map[string]string{
		ModelFile:     "51cbf31fb760a0579a26a4c4b97bc9ca0b931e788524565cbce64e5b20ebd3c3",
		OptimizerFile: "f88875eb421f50c9427fd4cc41cfc01d8b6ac216d918cb64724f7bbc57a506dd",
		ManifestFile:  "92e152230dd0f121f555460314f647e191928211ed88bb274f620ab966a94f33", // "created" blanked
	}
	created := regexp.MustCompile(`"created": "[^"]*"`)
	for _, id := range []ShardID{{}, {Count: 1, Attempt: "12"}} {
		st := NewMemStorage()
		w := newTestWriter(t, st, 0, nil)
		s := testState("g", 7)
		s.Sidecars = []Sidecar{{Name: "config.json", Data: []byte(`{"a":1}`)}}
		s.Shard = id
		saveSync(t, w, s)
		names, _ := st.List(testCtx(t), "g/step-00000007")
		if !reflect.DeepEqual(names, []string{"config.json", ManifestFile, ModelFile, OptimizerFile}) {
			t.Fatalf("%+v: directory holds %v", id, names)
		}
		for name, want := range pinned {
			b := readAll(t, st, "g/step-00000007/"+name)
			if name == ManifestFile {
				b = created.ReplaceAll(b, []byte(`"created": "X"`))
			}
			if got := sha(b); got != want {
				t.Errorf("%+v: %s has sha256 %s, pinned %s:\n%s", id, name, got, want, b[:min(len(b), 600)])
			}
		}
	}
}
