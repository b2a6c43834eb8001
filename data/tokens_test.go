package data

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// goDocs writes n small Go-like documents under a fresh directory (in two
// subdirectories, so the walk and the sort by path are both exercised).
func goDocs(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	for i := range n {
		sub := []string{"a", "b/c"}[i%2]
		src := fmt.Sprintf("package p%d\n\n// F%d returns «%d» — the answer.\nfunc F%d() int {\n\treturn %d * %d\n}\n", i, i, i, i, i, i+1)
		writeFile(t, filepath.Join(dir, sub, fmt.Sprintf("f%02d.go", i)), []byte(strings.Repeat(src, 1+i%3)))
	}
	return dir
}

func prepare(t *testing.T, c PrepareConfig) *PrepareSummary {
	t.Helper()
	s, err := Prepare(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func prepConfig(out string, inputs ...string) PrepareConfig {
	c := DefaultPrepareConfig()
	c.Inputs, c.Out = inputs, out
	return c
}

// Prepared GPT-2 shards load back as the documents' tokens in sorted path
// order, each followed by EOT, every 10th in validation, split over
// several shards per split.
func TestPrepareLoadTokensRoundTrip(t *testing.T) {
	in := goDocs(t, 25)
	writeFile(t, filepath.Join(in, "a", "notes.txt"), []byte("not Go"))
	writeFile(t, filepath.Join(in, "a", "bin.go"), []byte("package x\x00binary"))
	writeFile(t, filepath.Join(in, "a", "empty.go"), nil)
	out := filepath.Join(t.TempDir(), "ds")
	c := prepConfig(out, in)
	c.Include, c.ShardTokens, c.Workers = []string{"*.go"}, 300, 3
	s := prepare(t, c)

	tok, _ := NewTokenizer("gpt2")
	var files []string
	filepath.WalkDir(in, func(p string, d os.DirEntry, err error) error {
		if strings.HasSuffix(p, ".go") && !strings.Contains(p, "bin.go") && !strings.Contains(p, "empty.go") {
			files = append(files, p)
		}
		return nil
	})
	slices.Sort(files)
	var train, val []uint16
	for i, f := range files {
		b, _ := os.ReadFile(f)
		ids := append(tok.Encode(string(b)), 50256)
		for _, id := range ids {
			if i%10 == 9 {
				val = append(val, uint16(id))
			} else {
				train = append(train, uint16(id))
			}
		}
	}
	m := s.Manifest
	if m.Documents != 25 || m.Train.Documents != 23 || m.Val.Documents != 2 || m.Skipped != 2 || len(m.Train.Shards) < 3 ||
		m.Train.Tokens != int64(len(train)) || m.Val.Tokens != int64(len(val)) {
		t.Fatalf("manifest: %+v", m)
	}
	sp, err := LoadTokens(out, 16)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Tokenizer != "gpt2" || sp.Vocab != 50257 || !slices.Equal(sp.Train.Tokens, train) || !slices.Equal(sp.Validation.Tokens, val) {
		t.Fatalf("loaded %s %d: %d+%d tokens, want %d+%d", sp.Tokenizer, sp.Vocab, len(sp.Train.Tokens), len(sp.Validation.Tokens), len(train), len(val))
	}
	if sp.Train.N != (len(train)-1)/16 || sp.Train.Context != 16 || len(sp.Train.Files) != len(m.Train.Shards) || !strings.Contains(sp.Source, out) {
		t.Fatalf("split: N %d, files %v, source %s", sp.Train.N, sp.Train.Files, sp.Source)
	}
	in16, tg := make([]int32, 16), make([]int32, 16)
	sp.Train.Window(1, in16, tg)
	if in16[0] != int32(train[16]) || tg[15] != int32(train[32]) {
		t.Fatal("window 1 is not tokens [16, 33)")
	}
	b9, _ := os.ReadFile(files[9])
	b19, _ := os.ReadFile(files[19])
	if got := tok.Decode(toInts(sp.Validation.Tokens)); got != string(b9)+"<|endoftext|>"+string(b19)+"<|endoftext|>" {
		t.Fatalf("validation decodes to %q", got[:min(80, len(got))])
	}
	st, err := StatTokens(out)
	if err != nil || st.Train.Tokens != m.Train.Tokens || st.Layout != "loom" {
		t.Fatalf("StatTokens: %v %+v", err, st)
	}
	if _, err := LoadTokens(out, len(val)); err == nil || !strings.Contains(err.Error(), "validation split has") {
		t.Fatalf("a context longer than validation: %v", err)
	}
}

func toInts(ids []uint16) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// Byte tokens of a directory are the tokens LoadText gives (the same
// files, order, separators and split), by documents and by tokens.
func TestPrepareByteMatchesLoadText(t *testing.T) {
	for _, n := range []int{23, 4} {
		in := goDocs(t, n)
		out := filepath.Join(t.TempDir(), "ds")
		c := prepConfig(out, in)
		c.Tokenizer, c.ShardTokens = "byte", 97
		prepare(t, c)
		got, err := LoadTokens(out, 8)
		if err != nil {
			t.Fatal(err)
		}
		want, err := LoadText(in, 8)
		if err != nil {
			t.Fatal(err)
		}
		if got.Tokenizer != "byte" || want.Tokenizer != "byte" || got.Vocab != 256 ||
			!slices.Equal(got.Train.Tokens, want.Train.Tokens) || !slices.Equal(got.Validation.Tokens, want.Validation.Tokens) ||
			got.Train.N != want.Train.N || got.Validation.N != want.Validation.N {
			t.Fatalf("%d docs: tokens %d+%d, LoadText %d+%d", n, len(got.Train.Tokens), len(got.Validation.Tokens), len(want.Train.Tokens), len(want.Validation.Tokens))
		}
	}
}

// The output is byte-identical for any number of workers.
func TestPrepareDeterministicAcrossWorkers(t *testing.T) {
	in := goDocs(t, 31)
	var first map[string][]byte
	for _, w := range []int{1, 2, 5, 16} {
		out := filepath.Join(t.TempDir(), "ds")
		c := prepConfig(out, in)
		c.Workers, c.ShardTokens = w, 250
		prepare(t, c)
		files := map[string][]byte{}
		ents, _ := os.ReadDir(out)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(out, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[e.Name()] = b
		}
		if len(files) < 4 {
			t.Fatalf("%d files", len(files))
		}
		if first == nil {
			first = files
		} else if !reflect.DeepEqual(files, first) {
			t.Fatalf("--workers %d wrote other bytes than --workers 1", w)
		}
	}
}

// Fewer documents than val-every: the last 1/N of the tokens is
// validation, and a document across the cut is counted where it ends.
func TestPrepareFewDocuments(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "one.txt"), []byte(strings.Repeat("x", 99)))
	out := filepath.Join(t.TempDir(), "ds")
	c := prepConfig(out, filepath.Join(in, "one.txt"))
	c.Tokenizer = "byte"
	m := prepare(t, c).Manifest
	if m.Train.Tokens != 90 || m.Val.Tokens != 10 || m.Train.Documents != 0 || m.Val.Documents != 1 || !strings.Contains(m.Split, "last 1/10") {
		t.Fatalf("%+v", m)
	}
	c.Overwrite, c.ValEvery = true, 200
	if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), "too few") {
		t.Fatalf("100 tokens, 1/200 held out: %v", err)
	}
}

// Inputs: globs, explicit files, excluded files and directories, symbolic
// links not followed, the output directory never read back.
func TestPrepareInputs(t *testing.T) {
	in := goDocs(t, 6)
	writeFile(t, filepath.Join(in, "a", "x_test.go"), []byte("package test\n"))
	writeFile(t, filepath.Join(in, "testdata", "t.go"), []byte("package testdata\n"))
	writeFile(t, filepath.Join(in, "README"), []byte("read me\n"))
	if err := os.Symlink(filepath.Join(in, "a"), filepath.Join(in, "link")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(in, "out") // inside the walked input
	c := prepConfig(out, filepath.Join(in, "a"), filepath.Join(in, "b"), filepath.Join(in, "test*"), filepath.Join(in, "README"), in)
	c.Include, c.Exclude, c.Tokenizer = []string{"*.go"}, []string{"*_test.go"}, "byte"
	m := prepare(t, c).Manifest
	// 6 documents + README (explicit) + testdata/t.go (the glob); x_test.go
	// excluded; link/ not followed; each file once.
	if m.Documents != 8 {
		t.Fatalf("%d documents: %+v", m.Documents, m)
	}
	c.Overwrite = true
	c.Exclude = append(c.Exclude, "testdata")
	c.Inputs = []string{in}
	if m := prepare(t, c).Manifest; m.Documents != 6 {
		t.Fatalf("excluding testdata: %d documents", m.Documents)
	}
	// Without --include the walk would see out/dataset.json (text), but
	// the output directory is never read.
	c.Include = nil
	if m := prepare(t, c).Manifest; m.Documents != 7 {
		t.Fatalf("6 documents and README: %d documents", m.Documents)
	}
	for _, bad := range []struct {
		inputs []string
		want   string
	}{
		{[]string{filepath.Join(in, "nope")}, "does not exist"},
		{[]string{filepath.Join(in, "*.zip")}, "matches no files"},
	} {
		c.Inputs = bad.inputs
		if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: %v", bad.inputs, err)
		}
	}
	bin := filepath.Join(in, "bin.dat")
	writeFile(t, bin, []byte{1, 0, 2})
	c.Inputs = []string{bin}
	if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("an explicit binary file: %v", err)
	}
	c.Inputs, c.Include = []string{in}, []string{"*.rs"}
	if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), "no files") || !strings.Contains(err.Error(), "*.rs") {
		t.Errorf("nothing matches: %v", err)
	}
}

// An existing non-empty output is refused without --overwrite; with it, a
// previous dataset is replaced, but other files are never deleted.
func TestPrepareOverwrite(t *testing.T) {
	in := goDocs(t, 12)
	out := filepath.Join(t.TempDir(), "ds")
	c := prepConfig(out, in)
	c.Tokenizer, c.ShardTokens = "byte", 100
	many := len(prepare(t, c).Manifest.Train.Shards)
	if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("second prepare without --overwrite: %v", err)
	}
	c.Overwrite, c.ShardTokens = true, 1<<20
	if m := prepare(t, c).Manifest; len(m.Train.Shards) != 1 || many < 2 {
		t.Fatalf("overwrite: %d shards (before %d)", len(m.Train.Shards), many)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 3 {
		t.Fatalf("old shards left: %v", ents)
	}
	writeFile(t, filepath.Join(out, "precious.txt"), []byte("keep"))
	if _, err := Prepare(context.Background(), c); err == nil || !strings.Contains(err.Error(), "precious.txt") {
		t.Fatalf("overwrite of a directory with other files: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, ManifestName)); err != nil {
		t.Fatal("a refused overwrite deleted the dataset")
	}
	// An overwrite that fails part-way (here: cancelled) leaves the old
	// dataset whole, and nothing of its staging.
	if err := os.Remove(filepath.Join(out, "precious.txt")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(out)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.ShardTokens = 100
	if _, err := Prepare(ctx, c); err == nil {
		t.Fatal("a cancelled prepare succeeded")
	}
	after, _ := os.ReadDir(out)
	if len(after) != len(before) {
		t.Fatalf("a failed overwrite changed the dataset: %v, was %v", after, before)
	}
	if m, err := readManifest(out); err != nil || len(m.Train.Shards) != 1 {
		t.Fatalf("the old dataset after a failed overwrite: %v %v", m, err)
	}
	if _, err := LoadTokens(out, 8); err != nil {
		t.Fatalf("the old dataset after a failed overwrite: %v", err)
	}
	// A killed run's staging directory is not in the way of the next
	// overwrite, which removes it.
	if err := os.Mkdir(filepath.Join(out, stagingPrefix+"123"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := prepare(t, c).Manifest
	if ents, _ := os.ReadDir(out); len(ents) != 1+len(m.Train.Shards)+len(m.Val.Shards) {
		t.Fatalf("after an overwrite over a stale staging directory: %v", ents)
	}
}

// shardErrorAt asserts err is a *ShardError for file at offset whose
// message names both and says want.
func shardErrorAt(t *testing.T, err error, file string, off int64, want string) {
	t.Helper()
	var se *ShardError
	if !errors.As(err, &se) {
		t.Fatalf("want a ShardError for %s, got %v", file, err)
	}
	msg := err.Error()
	if se.File != file || se.Offset != off || !strings.Contains(msg, file) || !strings.Contains(msg, fmt.Sprintf("byte %d", off)) || !strings.Contains(msg, want) {
		t.Fatalf("got %q (file %s, offset %d), want %s at byte %d: %q", msg, se.File, se.Offset, file, off, want)
	}
}

// Every kind of damaged shard is refused, naming the file and offset.
func TestCorruptShards(t *testing.T) {
	in := goDocs(t, 20)
	clean := filepath.Join(t.TempDir(), "ds")
	c := prepConfig(clean, in)
	c.ShardTokens = 400
	m := prepare(t, c).Manifest
	cb := prepConfig(filepath.Join(t.TempDir(), "bytes"), in)
	cb.Tokenizer = "byte"
	prepare(t, cb)

	// fresh copies the clean dataset and returns it and its second
	// training shard.
	fresh := func(t *testing.T) (string, string) {
		dir := t.TempDir()
		ents, _ := os.ReadDir(clean)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(clean, e.Name()))
			writeFile(t, filepath.Join(dir, e.Name()), b)
		}
		return dir, filepath.Join(dir, m.Train.Shards[1].File)
	}
	patch := func(t *testing.T, path string, off int64, b ...byte) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	size := shardHeaderSize + 2*m.Train.Shards[1].Tokens

	t.Run("truncated", func(t *testing.T) {
		dir, shard := fresh(t)
		os.Truncate(shard, size-3)
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, size-3, "truncated")
		os.Truncate(shard, 10)
		_, err = LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, 10, "truncated")
	})
	t.Run("trailing bytes", func(t *testing.T) {
		dir, shard := fresh(t)
		f, _ := os.OpenFile(shard, os.O_APPEND|os.O_WRONLY, 0)
		f.Write([]byte{1, 2})
		f.Close()
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, size, "bytes after")
	})
	t.Run("flipped payload byte", func(t *testing.T) {
		dir, shard := fresh(t)
		b, _ := os.ReadFile(shard)
		patch(t, shard, 101, b[101]^0x10)
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, shardHeaderSize, "checksum mismatch")
	})
	t.Run("flipped header byte", func(t *testing.T) {
		dir, shard := fresh(t)
		b, _ := os.ReadFile(shard)
		patch(t, shard, offDocuments, b[offDocuments]^1)
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, offHeaderCRC, "header checksum mismatch")
	})
	t.Run("bad magic", func(t *testing.T) {
		dir, shard := fresh(t)
		patch(t, shard, 0, 'X')
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, 0, "bad magic")
	})
	t.Run("unknown version", func(t *testing.T) {
		dir, shard := fresh(t)
		patch(t, shard, offVersion, 2)
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, offVersion, "unknown shard version 2")
	})
	t.Run("tokenizers mixed", func(t *testing.T) {
		dir, _ := fresh(t)
		b, _ := os.ReadFile(filepath.Join(cb.Out, "val-00000.tok"))
		val := filepath.Join(dir, "val-00000.tok")
		writeFile(t, val, b)
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, val, offVocab, "made with tokenizer byte (vocab 256), but dataset.json says gpt2 (vocab 50257): shards of different tokenizers are mixed")
		if _, err := StatTokens(dir); err == nil {
			t.Fatal("StatTokens does not check the headers")
		}
	})
	t.Run("id not below vocab", func(t *testing.T) {
		// A shard whose checksums are right but which holds an id >= vocab
		// (a writer's bug): the offset of the id is named.
		dir, shard := fresh(t)
		ids := make([]uint16, m.Train.Shards[1].Tokens)
		ids[77] = 50257
		sh, err := writeShard(shard, "gpt2", 50257, ids, 1, make([]byte, 64))
		if err != nil {
			t.Fatal(err)
		}
		mf := *m
		mf.Train.Shards = slices.Clone(m.Train.Shards)
		mf.Train.Shards[1] = sh
		if err := writeManifest(dir, &mf); err != nil {
			t.Fatal(err)
		}
		_, err = LoadTokens(dir, 8)
		shardErrorAt(t, err, shard, shardHeaderSize+2*77, "token id 50257 is not below the vocab 50257")
	})
	t.Run("manifest", func(t *testing.T) {
		dir, shard := fresh(t)
		os.Remove(shard)
		if _, err := LoadTokens(dir, 8); err == nil || !strings.Contains(err.Error(), shard) || !strings.Contains(err.Error(), "listed in") {
			t.Fatalf("missing shard: %v", err)
		}
		mp := filepath.Join(dir, ManifestName)
		b, _ := os.ReadFile(mp)
		writeFile(t, mp, bytes.Replace(b, []byte(`"vocab": 50257`), []byte(`"vocab": 50000`), 1))
		if _, err := LoadTokens(dir, 8); err == nil || !strings.Contains(err.Error(), mp) || !strings.Contains(err.Error(), "vocab 50257") {
			t.Fatalf("manifest with the wrong vocab: %v", err)
		}
		writeFile(t, mp, b[:40])
		if _, err := LoadTokens(dir, 8); err == nil || !strings.Contains(err.Error(), mp) || !strings.Contains(err.Error(), "byte 40") {
			t.Fatalf("truncated manifest: %v", err)
		}
		os.Remove(mp)
		if _, err := LoadTokens(dir, 8); err == nil || !strings.Contains(err.Error(), "holds no dataset.json") {
			t.Fatalf("no manifest: %v", err)
		}
	})
	// The clean copy still loads.
	if _, err := LoadTokens(clean, 8); err != nil {
		t.Fatal(err)
	}
}

// llmcFile writes ids as an llm.c .bin file (256 int32 header).
func llmcFile(t *testing.T, path string, magic, version uint32, ids []uint16) {
	t.Helper()
	b := make([]byte, 1024+2*len(ids))
	binary.LittleEndian.PutUint32(b, magic)
	binary.LittleEndian.PutUint32(b[4:], version)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(ids)))
	for i, id := range ids {
		binary.LittleEndian.PutUint16(b[1024+2*i:], id)
	}
	writeFile(t, path, b)
}

func rawIDs(ids []uint16) []byte {
	b := make([]byte, 2*len(ids))
	for i, id := range ids {
		binary.LittleEndian.PutUint16(b[2*i:], id)
	}
	return b
}

// llm.c's .bin files (header, shards sorted by name) and nanoGPT's
// (train.bin and val.bin, no header) load as GPT-2 tokens.
func TestLoadLLMCAndNanoGPT(t *testing.T) {
	seq := func(lo, n int) []uint16 {
		s := make([]uint16, n)
		for i := range s {
			s[i] = uint16((lo + i) % 50257)
		}
		return s
	}
	dir := t.TempDir()
	llmcFile(t, filepath.Join(dir, "tiny_train_000002.bin"), 20240520, 1, seq(100, 30))
	llmcFile(t, filepath.Join(dir, "tiny_train_000001.bin"), 20240520, 1, seq(50000, 40))
	llmcFile(t, filepath.Join(dir, "tiny_val_000000.bin"), 20240520, 1, seq(7, 20))
	s, err := LoadTokens(dir, 8)
	if err != nil {
		t.Fatal(err)
	}
	if s.Tokenizer != "gpt2" || s.Vocab != 50257 || !slices.Equal(s.Train.Tokens, append(seq(50000, 40), seq(100, 30)...)) ||
		!slices.Equal(s.Validation.Tokens, seq(7, 20)) || s.Train.N != 69/8 || !strings.Contains(s.Source, "llm.c") {
		t.Fatalf("llm.c: %+v", s)
	}
	if m, err := StatTokens(dir); err != nil || m.Layout != "llm.c" || m.Train.Tokens != 70 || len(m.Train.Shards) != 2 {
		t.Fatalf("StatTokens: %v %+v", err, m)
	}

	nano := t.TempDir()
	writeFile(t, filepath.Join(nano, "train.bin"), rawIDs(seq(1, 50)))
	writeFile(t, filepath.Join(nano, "val.bin"), rawIDs(seq(2, 12)))
	s, err = LoadTokens(nano, 8)
	if err != nil || !slices.Equal(s.Train.Tokens, seq(1, 50)) || !slices.Equal(s.Validation.Tokens, seq(2, 12)) || !strings.Contains(s.Source, "nanogpt") {
		t.Fatalf("nanoGPT: %v %+v", err, s)
	}

	bad := func(t *testing.T, dir, file string, off int64, want string) {
		t.Helper()
		_, err := LoadTokens(dir, 8)
		shardErrorAt(t, err, filepath.Join(dir, file), off, want)
	}
	t.Run("llm.c truncated", func(t *testing.T) {
		d := t.TempDir()
		llmcFile(t, filepath.Join(d, "x_train.bin"), 20240520, 1, seq(0, 30))
		llmcFile(t, filepath.Join(d, "x_val.bin"), 20240520, 1, seq(0, 30))
		os.Truncate(filepath.Join(d, "x_val.bin"), 1024+2*30-4)
		bad(t, d, "x_val.bin", 1024+2*30-4, "truncated: the llm.c header says 30 tokens")
	})
	t.Run("llm.c bad magic", func(t *testing.T) {
		d := t.TempDir()
		llmcFile(t, filepath.Join(d, "x_train.bin"), 12345, 1, seq(0, 30))
		llmcFile(t, filepath.Join(d, "x_val.bin"), 20240520, 1, seq(0, 30))
		bad(t, d, "x_train.bin", 0, "bad magic 12345")
	})
	t.Run("llm.c version", func(t *testing.T) {
		d := t.TempDir()
		llmcFile(t, filepath.Join(d, "x_train.bin"), 20240520, 3, seq(0, 30))
		llmcFile(t, filepath.Join(d, "x_val.bin"), 20240520, 1, seq(0, 30))
		bad(t, d, "x_train.bin", 4, "llm.c version 3")
	})
	t.Run("llm.c Llama 3", func(t *testing.T) {
		d := t.TempDir()
		llmcFile(t, filepath.Join(d, "x_train.bin"), 20240801, 7, seq(0, 30))
		llmcFile(t, filepath.Join(d, "x_val.bin"), 20240520, 1, seq(0, 30))
		bad(t, d, "x_train.bin", 0, "Llama 3")
	})
	t.Run("id not below vocab", func(t *testing.T) {
		d := t.TempDir()
		ids := seq(0, 30)
		ids[9] = 60000
		llmcFile(t, filepath.Join(d, "x_train.bin"), 20240520, 1, seq(0, 30))
		llmcFile(t, filepath.Join(d, "x_val.bin"), 20240520, 1, ids)
		bad(t, d, "x_val.bin", 1024+2*9, "token id 60000 is not below GPT-2's vocab 50257")
	})
	t.Run("nanoGPT odd size", func(t *testing.T) {
		d := t.TempDir()
		writeFile(t, filepath.Join(d, "train.bin"), rawIDs(seq(1, 50))[:99])
		writeFile(t, filepath.Join(d, "val.bin"), rawIDs(seq(2, 12)))
		bad(t, d, "train.bin", 98, "odd number of bytes")
	})
	t.Run("missing val", func(t *testing.T) {
		d := t.TempDir()
		llmcFile(t, filepath.Join(d, "x_train.bin"), 20240520, 1, seq(0, 30))
		if _, err := LoadTokens(d, 8); err == nil || !strings.Contains(err.Error(), "needs both") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("empty dir", func(t *testing.T) {
		d := t.TempDir()
		if _, err := LoadTokens(d, 8); err == nil || !strings.Contains(err.Error(), "loom data prepare") {
			t.Fatalf("%v", err)
		}
		if _, err := LoadTokens(filepath.Join(d, "nope"), 8); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%v", err)
		}
	})
}
