package data

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// PrepareConfig is what Prepare (`loom data prepare`) reads, how it
// tokenises, and where it writes.
type PrepareConfig struct {
	// Inputs are files, directories (walked recursively; symbolic links
	// are not followed) or globs (expanded when no file has that name).
	Inputs []string
	// Include, when set, keeps only the walked files whose name matches
	// one of these globs (filepath.Match; a pattern with a '/' matches the
	// path relative to the walked directory instead). Exclude skips the
	// walked files and directories that match one. Files named in Inputs
	// are always taken.
	Include, Exclude []string
	Out              string // the output directory
	Tokenizer        string // NewTokenizer's name
	// ValEvery sends the document at sorted index i to validation when
	// i%ValEvery == ValEvery-1; with fewer documents than ValEvery, the
	// last 1/ValEvery of the tokens is validation instead (ValidationEvery
	// is LoadText's).
	ValEvery    int
	ShardTokens int  // tokens per shard file (the last of a split holds the rest)
	Workers     int  // documents encoded at once; the output does not depend on it
	Overwrite   bool // replace a dataset already in Out
	// Progress, when set, is called on Prepare's writing goroutine after
	// each document (it should return quickly).
	Progress func(PrepareProgress)
}

// DefaultPrepareConfig is GPT-2 tokens, every 10th document held out,
// 64 Mi tokens per shard, one worker per usable CPU.
func DefaultPrepareConfig() PrepareConfig {
	return PrepareConfig{Tokenizer: TokenizerGPT2, ValEvery: ValidationEvery, ShardTokens: 64 << 20, Workers: runtime.GOMAXPROCS(0)}
}

// Validate checks the settings (not the files).
func (c *PrepareConfig) Validate() error {
	switch {
	case len(c.Inputs) == 0:
		return errors.New("no inputs: name files, directories or globs to tokenise")
	case c.Out == "":
		return errors.New("no output directory (--out)")
	case c.ValEvery < 2:
		return fmt.Errorf("val-every must be >= 2 (every Nth document goes to validation), got %d", c.ValEvery)
	case c.ShardTokens < 1:
		return fmt.Errorf("shard-tokens must be >= 1, got %d", c.ShardTokens)
	case c.Workers < 1:
		return fmt.Errorf("workers must be >= 1, got %d", c.Workers)
	}
	if _, err := NewTokenizer(c.Tokenizer); err != nil {
		return err
	}
	for _, p := range append(append([]string(nil), c.Include...), c.Exclude...) {
		if _, err := filepath.Match(p, ""); err != nil {
			return fmt.Errorf("glob %q: %w", p, err)
		}
	}
	return nil
}

// PrepareProgress is how far Prepare is: documents written of the files
// found, their text bytes, the tokens they made.
type PrepareProgress struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
	Tokens            int64
	Elapsed           time.Duration
}

// PrepareSummary is what Prepare wrote (Manifest, as in dataset.json) and
// how long it took.
type PrepareSummary struct {
	Manifest *TokenManifest
	Elapsed  time.Duration
	Workers  int
}

// Prepare tokenises the documents named by c.Inputs into shards and a
// dataset.json in c.Out (docs/tokens.md): documents in sorted absolute
// path order, each followed by the tokenizer's EOT id (gpt2) or by '\n'
// unless it ends in one (byte); split into training and validation by
// c.ValEvery. Documents are encoded on c.Workers goroutines and written
// in order, so the output is byte-identical for any number of workers.
// Walked files that are empty, unreadable or hold NUL bytes (binary) are
// skipped and counted; an input named explicitly with NUL bytes is an
// error. An existing non-empty c.Out is refused unless c.Overwrite, and
// then only when it holds nothing but a previous dataset's files. On an
// error the shards written so far are removed.
func Prepare(ctx context.Context, c PrepareConfig) (*PrepareSummary, error) {
	start := time.Now()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	tok, _ := NewTokenizer(c.Tokenizer)
	old, err := checkOut(c.Out, c.Overwrite)
	if err != nil {
		return nil, err
	}
	outAbs, err := filepath.Abs(c.Out)
	if err != nil {
		return nil, err
	}
	docs, skipped, err := collectDocs(c, outAbs)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return nil, err
	}
	// Replacing a dataset, the new one is written beside it and moved in
	// only once complete: a failed or interrupted run leaves the old one.
	wc := c
	if len(old) > 0 {
		// Inside c.Out: the same file system, so the shards move by rename.
		if wc.Out, err = os.MkdirTemp(c.Out, stagingPrefix); err != nil {
			return nil, fmt.Errorf("--overwrite: %w", err)
		}
		defer os.RemoveAll(wc.Out)
	}
	m := &TokenManifest{Format: manifestFormat, Version: shardVersion, Tokenizer: tok.Name(), Vocab: tok.Vocab(), EOT: tok.EOT(),
		TokenBytes: 2, ValEvery: c.ValEvery, Skipped: skipped, Inputs: c.Inputs, Include: c.Include, Exclude: c.Exclude,
		Dir: c.Out, Layout: "loom"}
	w := &prepWriter{c: wc, m: m, buf: make([]byte, min(4<<20, 2*c.ShardTokens+2)&^1)}
	w.split[0] = &splitWriter{name: "train", info: &m.Train}
	w.split[1] = &splitWriter{name: "val", info: &m.Val}
	if err := w.run(ctx, docs, tok, start); err != nil {
		w.removeAll()
		return nil, err
	}
	if len(old) > 0 {
		if w.files, err = replaceDataset(c.Out, old, w.files); err != nil {
			w.removeAll()
			return nil, fmt.Errorf("--overwrite: %w", err)
		}
	}
	if err := writeManifest(c.Out, m); err != nil {
		w.removeAll()
		return nil, err
	}
	return &PrepareSummary{Manifest: m, Elapsed: time.Since(start), Workers: c.Workers}, nil
}

// stagingPrefix names the hidden directory in --out where an overwrite
// writes the new dataset until it is complete.
const stagingPrefix = ".prepare-"

// replaceDataset swaps a complete new dataset's shards (staged: paths in
// a directory inside out) for the old dataset's files in out, and returns the shards' new paths. The old manifest goes first,
// so that out never holds a manifest naming shards it does not have; the
// caller writes the new one last.
func replaceDataset(out string, old, staged []string) ([]string, error) {
	order := append([]string{}, old...)
	if i := slices.Index(order, ManifestName); i > 0 {
		order[0], order[i] = order[i], order[0]
	}
	for _, f := range order {
		if err := os.RemoveAll(filepath.Join(out, f)); err != nil {
			return nil, err
		}
	}
	moved := make([]string, 0, len(staged))
	for _, p := range staged {
		to := filepath.Join(out, filepath.Base(p))
		if err := os.Rename(p, to); err != nil {
			return moved, err
		}
		moved = append(moved, to)
	}
	return moved, nil
}

// checkOut returns the files of a previous dataset that --overwrite will
// remove, or refuses a directory holding anything else.
func checkOut(out string, overwrite bool) ([]string, error) {
	st, err := os.Stat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("output %s exists and is not a directory", out)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		return nil, err
	}
	if len(ents) == 0 {
		return nil, nil
	}
	if !overwrite {
		return nil, fmt.Errorf("output directory %s is not empty (%d entries, e.g. %s): choose another --out, or pass --overwrite to replace the dataset in it",
			out, len(ents), ents[0].Name())
	}
	var old []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), stagingPrefix) { // a killed run's staging
			old = append(old, e.Name())
			continue
		}
		if !e.Type().IsRegular() || !isDatasetFile(e.Name()) {
			return nil, fmt.Errorf("output directory %s holds %s, which is not a file of a token dataset: --overwrite replaces only %s and *.tok shards; choose another --out",
				out, e.Name(), ManifestName)
		}
		old = append(old, e.Name())
	}
	return old, nil
}

func isDatasetFile(name string) bool {
	if name == ManifestName || name == "."+ManifestName+".tmp" {
		return true
	}
	for _, split := range []string{"train-", "val-"} {
		if strings.HasPrefix(name, split) && strings.HasSuffix(name, ".tok") {
			return true
		}
	}
	return false
}

// writeManifest writes dataset.json atomically (a temporary file renamed),
// the last file of a dataset: a directory without one is not a dataset.
func writeManifest(dir string, m *TokenManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+ManifestName+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestName)); err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// encoded is one document's tokens, its separator included.
type encoded struct {
	ids   []uint16
	bytes int64
	skip  bool // empty, unreadable or binary: not a document
	err   error
}

// encodeDoc reads and encodes one document.
func encodeDoc(d docFile, tok Tokenizer) encoded {
	b, err := os.ReadFile(d.path)
	switch {
	case err != nil && d.explicit:
		return encoded{err: fmt.Errorf("input: %w", err)}
	case err != nil || len(b) == 0:
		return encoded{skip: true}
	case bytes.IndexByte(b, 0) >= 0:
		if d.explicit {
			return encoded{err: fmt.Errorf("input %s contains NUL bytes: not text", d.path)}
		}
		return encoded{skip: true}
	}
	// Go source is ~2 bytes per GPT-2 token, prose ~4: room for the
	// denser, so the slice rarely grows.
	ids := make([]uint16, 0, len(b)/2+16)
	if tok.EOT() < 0 {
		ids = make([]uint16, 0, len(b)+1)
	}
	ids, err = appendEncoded(tok, ids, string(b))
	if err != nil {
		return encoded{err: fmt.Errorf("%s: %w", d.path, err)}
	}
	if eot := tok.EOT(); eot >= 0 {
		ids = append(ids, uint16(eot))
	} else if b[len(b)-1] != '\n' {
		ids = append(ids, '\n')
	}
	return encoded{ids: ids, bytes: int64(len(b))}
}

// prepWriter receives documents in order and writes the shards.
type prepWriter struct {
	c     PrepareConfig
	m     *TokenManifest
	split [2]*splitWriter // train, val
	buf   []byte
	files []string // shards written, removed on failure
}

// splitWriter holds one split's tokens not yet in a shard.
type splitWriter struct {
	name    string
	info    *TokenSplitInfo
	pending []uint16
	ends    []int // offsets in pending where a document ends
}

// run encodes docs on c.Workers goroutines and writes them in order. At
// most a window of documents is in flight, so memory is bounded by the
// window and one shard.
func (w *prepWriter) run(ctx context.Context, docs []docFile, tok Tokenizer, start time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	type job struct {
		d   docFile
		out chan encoded
	}
	jobs := make(chan job)
	order := make(chan chan encoded, 4*w.c.Workers)
	wg.Add(1)
	go func() { // dispatcher
		defer wg.Done()
		defer close(jobs)
		defer close(order)
		for _, d := range docs {
			ch := make(chan encoded, 1)
			select {
			case order <- ch:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- job{d, ch}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range w.c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if ctx.Err() != nil {
					j.out <- encoded{err: ctx.Err()}
					continue
				}
				j.out <- encodeDoc(j.d, tok)
			}
		}()
	}
	var totalBytes int64
	for _, d := range docs {
		totalBytes += d.size
	}
	p := PrepareProgress{TotalFiles: len(docs), TotalBytes: totalBytes}
	for ch := range order {
		var e encoded
		select {
		case e = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.Files++
		if e.err != nil {
			return e.err
		}
		if e.skip {
			w.m.Skipped++
		} else {
			if err := w.add(e); err != nil {
				return err
			}
			p.Bytes += e.bytes
			p.Tokens += int64(len(e.ids))
		}
		if w.c.Progress != nil {
			p.Elapsed = time.Since(start)
			w.c.Progress(p)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return w.finish()
}

// add appends document number m.Documents to its split.
func (w *prepWriter) add(e encoded) error {
	i := w.m.Documents
	w.m.Documents++
	w.m.Bytes += e.bytes
	s := w.split[0]
	if i%int64(w.c.ValEvery) == int64(w.c.ValEvery-1) {
		s = w.split[1]
	}
	s.pending = appendCapped(s.pending, e.ids, w.c.ShardTokens)
	s.ends = append(s.ends, len(s.pending))
	// Until there are ValEvery documents the split may yet be by tokens
	// (finish), so nothing is written before.
	if w.m.Documents < int64(w.c.ValEvery) {
		return nil
	}
	return w.flush(s, false)
}

// appendCapped is append(dst, src...) that grows dst's array by doubling
// but to no more than limit (a shard) unless src needs more: a pending
// shard holds at most a shard and a document.
func appendCapped(dst, src []uint16, limit int) []uint16 {
	if need := len(dst) + len(src); need > cap(dst) {
		grown := make([]uint16, len(dst), max(min(2*cap(dst), limit), need))
		copy(grown, dst)
		dst = grown
	}
	return append(dst, src...)
}

// finish cuts the split by tokens if there were fewer than ValEvery
// documents, writes what is pending, and fills in the manifest's split.
func (w *prepWriter) finish() error {
	train, val := w.split[0], w.split[1]
	n := int64(w.c.ValEvery)
	if w.m.Documents == 0 {
		return fmt.Errorf("no text documents in %s%s: every file was empty, unreadable or binary", strings.Join(w.c.Inputs, " "), filterNote(w.c))
	}
	if w.m.Documents < n {
		all, ends := train.pending, train.ends
		cut := len(all) - len(all)/int(n)
		train.pending, val.pending = all[:cut:cut], all[cut:]
		train.ends, val.ends = nil, nil
		for _, e := range ends {
			if e <= cut {
				train.ends = append(train.ends, e)
			} else {
				val.ends = append(val.ends, e-cut)
			}
		}
		w.m.Split = fmt.Sprintf("%d documents (fewer than %d): the last 1/%d of the tokens for validation", w.m.Documents, n, n)
	} else {
		w.m.Split = fmt.Sprintf("%d documents: every %dth by sorted path for validation", w.m.Documents, n)
	}
	for _, s := range w.split {
		if len(s.pending) == 0 && len(s.info.Shards) == 0 {
			return fmt.Errorf("%s split would be empty: %d documents of %d tokens are too few to hold out 1/%d for validation",
				s.name, w.m.Documents, int64(len(train.pending)+len(val.pending)), n)
		}
		if err := w.flush(s, true); err != nil {
			return err
		}
	}
	return nil
}

// flush writes s's full shards, and with final the rest.
func (w *prepWriter) flush(s *splitWriter, final bool) error {
	done, doneDocs := 0, 0 // tokens and document ends written
	for len(s.pending)-done >= w.c.ShardTokens || final && len(s.pending) > done {
		n := min(len(s.pending)-done, w.c.ShardTokens)
		docs := 0
		for doneDocs+docs < len(s.ends) && s.ends[doneDocs+docs] <= done+n {
			docs++
		}
		path := filepath.Join(w.c.Out, fmt.Sprintf("%s-%05d.tok", s.name, len(s.info.Shards)))
		sh, err := writeShard(path, w.m.Tokenizer, w.m.Vocab, s.pending[done:done+n], int64(docs), w.buf)
		if err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		w.files = append(w.files, path)
		s.info.Shards = append(s.info.Shards, sh)
		s.info.Tokens += sh.Tokens
		s.info.Documents += sh.Documents
		done += n
		doneDocs += docs
	}
	if done > 0 { // keep the rest at the front, reusing the array
		s.pending = s.pending[:copy(s.pending, s.pending[done:])]
		s.ends = s.ends[:copy(s.ends, s.ends[doneDocs:])]
		for i := range s.ends {
			s.ends[i] -= done
		}
	}
	return nil
}

func (w *prepWriter) removeAll() {
	for _, f := range w.files {
		os.Remove(f)
	}
}
