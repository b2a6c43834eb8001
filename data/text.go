package data

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// TextVocab is the number of byte-level token ids: a token is one byte.
const TextVocab = 256

// ValidationEvery is the split of a text directory: the document at sorted
// index i goes to validation when i%ValidationEvery == ValidationEvery-1
// (every 10th file), the rest to training. With fewer documents than that
// (a single file, say), the last 1/ValidationEvery of the concatenated bytes
// is validation instead.
const ValidationEvery = 10

// TextSet is one split of a tokenised corpus cut into N windows of
// Context+1 tokens: window i is Tokens[i·Context : i·Context+Context+1], so
// consecutive windows share one token (the last target of one is the first
// input of the next) and a trailing remainder shorter than a window is
// unused. Index windows with a Sampler: NewSampler(set.N, seed).
type TextSet struct {
	// Tokens is the split's token ids, in [0, TextSplit.Vocab). For byte
	// text (LoadText) they are the documents' bytes concatenated in sorted
	// path order, each document followed by '\n' unless it already ends in
	// one; for token shards (LoadTokens), the split's shards concatenated
	// in manifest order.
	Tokens  []uint16
	Context int
	N       int      // windows: (len(Tokens)-1)/Context
	Files   []string // the documents (text) or shard files (tokens) of this split
}

// NumTokens is the number of tokens in the split.
func (s *TextSet) NumTokens() int { return len(s.Tokens) }

// Span is window i's Context+1 tokens (a view, not a copy).
func (s *TextSet) Span(i int) []uint16 {
	if i < 0 || i >= s.N {
		panic(fmt.Sprintf("data: text window %d out of range [0, %d)", i, s.N))
	}
	return s.Tokens[i*s.Context : i*s.Context+s.Context+1]
}

// Window writes window i's inputs (its first Context tokens) and targets
// (the same shifted by one) into the first Context entries of inputs and
// targets, which must be at least that long.
func (s *TextSet) Window(i int, inputs, targets []int32) {
	w := s.Span(i)
	in, tg := inputs[:s.Context], targets[:s.Context]
	w = w[:len(in)+1]
	for k := range in {
		in[k] = int32(w[k])
		tg[k] = int32(w[k+1])
	}
}

// TextSplit is a train/validation pair of token windows that never share
// a token.
type TextSplit struct {
	Train, Validation *TextSet
	Vocab             int    // token ids are in [0, Vocab): TextVocab for byte text
	Tokenizer         string // how to decode the ids (NewTokenizer): "byte" for LoadText
	Source            string // path and how it was split, for logs
}

// LoadText reads byte-level text for a model with the given context length
// from path: one file, or every regular file under a directory (walked in
// sorted order; symbolic links are not followed, so there are no loops and
// no duplicates; unreadable files, empty files and files containing NUL
// bytes, which are taken to be binary, are skipped). The split into training
// and validation is by document and deterministic (see ValidationEvery).
// Both splits must hold at least context+1 tokens (one window).
func LoadText(path string, context int) (*TextSplit, error) {
	if context < 1 {
		return nil, fmt.Errorf("text dataset %s: context must be >= 1, got %d", path, context)
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("text dataset %s does not exist: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("text dataset: %w", err)
	}
	var docs []textDoc
	if st.IsDir() {
		if docs, err = readTextDir(path); err != nil {
			return nil, err
		}
	} else {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("text dataset: %w", err)
		}
		if bytes.IndexByte(b, 0) >= 0 {
			return nil, fmt.Errorf("text dataset %s contains NUL bytes: not text", path)
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("text dataset %s is empty", path)
		}
		docs = []textDoc{{path, b}}
	}
	train, val, how := splitText(docs)
	s := &TextSplit{Train: train, Validation: val, Vocab: TextVocab, Tokenizer: TokenizerByte}
	for _, set := range []struct {
		name string
		s    *TextSet
	}{{"training", train}, {"validation", val}} {
		if n := len(set.s.Tokens); n < context+1 {
			return nil, fmt.Errorf("context %d needs at least %d tokens; %s's %s split has %d", context, context+1, path, set.name, n)
		}
		set.s.Context = context
		set.s.N = (len(set.s.Tokens) - 1) / context
	}
	s.Source = fmt.Sprintf("%s (%s; %d+%d bytes, %d+%d windows of %d)", path, how,
		len(train.Tokens), len(val.Tokens), train.N, val.N, context)
	return s, nil
}

type textDoc struct {
	path string
	b    []byte
}

func readTextDir(root string) ([]textDoc, error) {
	var docs []textDoc
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() && p != root {
				return fs.SkipDir // unreadable directory
			}
			if p == root {
				return err
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil // directories are walked; links, devices, pipes skipped
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 || bytes.IndexByte(b, 0) >= 0 {
			return nil
		}
		docs = append(docs, textDoc{p, b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("text dataset: %w", err)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("no readable text files under %s", root)
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].path < docs[j].path })
	return docs, nil
}

// splitText divides docs (sorted) into training and validation sets.
func splitText(docs []textDoc) (train, val *TextSet, how string) {
	train, val = &TextSet{}, &TextSet{}
	if len(docs) >= ValidationEvery {
		for i, d := range docs {
			s := train
			if i%ValidationEvery == ValidationEvery-1 {
				s = val
			}
			s.Tokens = appendDoc(s.Tokens, d.b)
			s.Files = append(s.Files, d.path)
		}
		return train, val, fmt.Sprintf("%d files: %d for training, %d (every %dth) for validation",
			len(docs), len(train.Files), len(val.Files), ValidationEvery)
	}
	var all []uint16
	var ends []int // end offset of each document in all
	for _, d := range docs {
		all = appendDoc(all, d.b)
		ends = append(ends, len(all))
	}
	cut := len(all) - len(all)/ValidationEvery
	train.Tokens, val.Tokens = all[:cut:cut], all[cut:]
	start := 0
	for i, d := range docs {
		if start < cut {
			train.Files = append(train.Files, d.path)
		}
		if ends[i] > cut {
			val.Files = append(val.Files, d.path)
		}
		start = ends[i]
	}
	files := "1 file"
	if len(docs) > 1 {
		files = fmt.Sprintf("%d files", len(docs))
	}
	return train, val, fmt.Sprintf("%s: the last 1/%d of the bytes for validation", files, ValidationEvery)
}

// appendDoc appends b's bytes as token ids and, unless b ends in one, a
// '\n' separator.
func appendDoc(dst []uint16, b []byte) []uint16 {
	dst = slices.Grow(dst, len(b)+1)
	for _, c := range b {
		dst = append(dst, uint16(c))
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		dst = append(dst, '\n')
	}
	return dst
}
