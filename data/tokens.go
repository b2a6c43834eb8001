package data

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The token shard format (docs/tokens.md): a 64-byte little-endian header,
// then the ids. Offsets of the header's fields:
const (
	shardMagic      = "LOOMTOK\x00"
	shardVersion    = 1
	shardHeaderSize = 64

	offVersion   = 8  // uint32, shardVersion
	offWidth     = 12 // uint32, bytes per token id: 2 (vocab <= 65536) or 4
	offVocab     = 16 // uint32
	offTokenizer = 20 // [16]byte, the tokenizer's name, NUL-padded
	offTokens    = 36 // uint64, ids in the payload
	offDocuments = 44 // uint64, documents that end in this shard
	offPayload   = 52 // uint32, CRC-32C (Castagnoli) of the payload
	offHeaderCRC = 56 // uint32, CRC-32C of header bytes [0, 56)
	// bytes [60, 64) are reserved and zero.

	tokenizerNameLen = 16
)

// ManifestName is the file in a prepared directory that lists its shards.
const ManifestName = "dataset.json"

// manifestFormat is TokenManifest.Format.
const manifestFormat = "loom-tokens"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ShardError is a token file that cannot be read as what it claims: File,
// the byte Offset where the problem is (the field, the token, or the end
// of the file), and what is wrong.
type ShardError struct {
	File   string
	Offset int64
	Reason string
}

func (e *ShardError) Error() string {
	return fmt.Sprintf("%s: byte %d: %s", e.File, e.Offset, e.Reason)
}

func shardErr(file string, off int64, format string, args ...any) error {
	return &ShardError{File: file, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// TokenManifest is dataset.json: what `loom data prepare` wrote and from
// what. StatTokens fills one in for llm.c and nanoGPT directories too
// (Layout says which; their counts come from the files).
type TokenManifest struct {
	Format     string `json:"format"`  // "loom-tokens"
	Version    int    `json:"version"` // 1
	Tokenizer  string `json:"tokenizer"`
	Vocab      int    `json:"vocab"`
	EOT        int    `json:"eot"`         // the id after each document; -1: none (byte: '\n')
	TokenBytes int    `json:"token_bytes"` // 2
	// ValEvery and Split say how validation was held out: every
	// ValEvery-th document by sorted path, or the last 1/ValEvery of the
	// tokens when there were fewer documents.
	ValEvery  int            `json:"val_every"`
	Split     string         `json:"split"`
	Train     TokenSplitInfo `json:"train"`
	Val       TokenSplitInfo `json:"val"`
	Documents int64          `json:"documents"`
	Bytes     int64          `json:"bytes"`         // text bytes read
	Skipped   int64          `json:"skipped_files"` // empty, binary (NUL bytes) or unreadable files in walked directories
	Inputs    []string       `json:"inputs"`        // as given to prepare
	Include   []string       `json:"include,omitempty"`
	Exclude   []string       `json:"exclude,omitempty"`

	Dir    string `json:"-"` // the directory read
	Layout string `json:"-"` // "loom", "llm.c" or "nanogpt"
}

// TokenSplitInfo is one split's shards, in the order they concatenate.
type TokenSplitInfo struct {
	Tokens    int64        `json:"tokens"`
	Documents int64        `json:"documents"`
	Shards    []TokenShard `json:"shards"`
}

// TokenShard is one shard file of a split.
type TokenShard struct {
	File      string `json:"file"` // relative to the dataset directory
	Tokens    int64  `json:"tokens"`
	Documents int64  `json:"documents"`
	CRC32C    uint32 `json:"crc32c"` // of the payload, as in the header
}

// shardHeader is a decoded header.
type shardHeader struct {
	width, vocab      uint32
	tokenizer         string
	tokens, documents uint64
	payloadCRC        uint32
}

func encodeShardHeader(h shardHeader) []byte {
	b := make([]byte, shardHeaderSize)
	copy(b, shardMagic)
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], shardVersion)
	le.PutUint32(b[offWidth:], h.width)
	le.PutUint32(b[offVocab:], h.vocab)
	copy(b[offTokenizer:offTokenizer+tokenizerNameLen], h.tokenizer)
	le.PutUint64(b[offTokens:], h.tokens)
	le.PutUint64(b[offDocuments:], h.documents)
	le.PutUint32(b[offPayload:], h.payloadCRC)
	le.PutUint32(b[offHeaderCRC:], crc32.Checksum(b[:offHeaderCRC], castagnoli))
	return b
}

// decodeShardHeader checks b (the first 64 bytes of file) and decodes it.
func decodeShardHeader(file string, b []byte) (shardHeader, error) {
	le := binary.LittleEndian
	var h shardHeader
	if string(b[:len(shardMagic)]) != shardMagic {
		return h, shardErr(file, 0, "bad magic %q, want %q: not a loom token shard", b[:len(shardMagic)], shardMagic)
	}
	if v := le.Uint32(b[offVersion:]); v != shardVersion {
		return h, shardErr(file, offVersion, "unknown shard version %d (this build reads version %d)", v, shardVersion)
	}
	if got, want := le.Uint32(b[offHeaderCRC:]), crc32.Checksum(b[:offHeaderCRC], castagnoli); got != want {
		return h, shardErr(file, offHeaderCRC, "header checksum mismatch (stored %08x, computed %08x over bytes [0, %d)): the header is damaged", got, want, offHeaderCRC)
	}
	h.width, h.vocab = le.Uint32(b[offWidth:]), le.Uint32(b[offVocab:])
	name := b[offTokenizer : offTokenizer+tokenizerNameLen]
	h.tokenizer = string(bytes.TrimRight(name, "\x00"))
	h.tokens, h.documents = le.Uint64(b[offTokens:]), le.Uint64(b[offDocuments:])
	h.payloadCRC = le.Uint32(b[offPayload:])
	switch {
	case h.vocab < 1:
		return h, shardErr(file, offVocab, "vocab %d", h.vocab)
	case h.vocab > 1<<16:
		return h, shardErr(file, offVocab, "vocab %d needs 4-byte token ids, which this build does not load (token ids are held as uint16: vocab <= 65536)", h.vocab)
	case h.width != 2:
		return h, shardErr(file, offWidth, "token width %d bytes; a vocab of %d has 2-byte ids", h.width, h.vocab)
	case h.tokenizer == "":
		return h, shardErr(file, offTokenizer, "no tokenizer name")
	}
	return h, nil
}

// writeShard writes ids as one shard at path (created or truncated), with
// the header recording tokenizer, vocab and docs, and returns its
// manifest entry. buf is scratch space of any even length > 0.
func writeShard(path, tokenizer string, vocab int, ids []uint16, docs int64, buf []byte) (TokenShard, error) {
	crc := uint32(0)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return TokenShard{}, err
	}
	fail := func(err error) (TokenShard, error) {
		f.Close()
		os.Remove(path)
		return TokenShard{}, err
	}
	// The header goes last, once the payload's checksum is known.
	if _, err := f.Write(make([]byte, shardHeaderSize)); err != nil {
		return fail(err)
	}
	for rest := ids; len(rest) > 0; {
		n := min(len(rest), len(buf)/2)
		b := buf[:2*n]
		for i, id := range rest[:n] {
			binary.LittleEndian.PutUint16(b[2*i:], id)
		}
		crc = crc32.Update(crc, castagnoli, b)
		if _, err := f.Write(b); err != nil {
			return fail(err)
		}
		rest = rest[n:]
	}
	h := shardHeader{width: 2, vocab: uint32(vocab), tokenizer: tokenizer, tokens: uint64(len(ids)), documents: uint64(docs), payloadCRC: crc}
	if _, err := f.WriteAt(encodeShardHeader(h), 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return TokenShard{}, err
	}
	return TokenShard{File: filepath.Base(path), Tokens: int64(len(ids)), Documents: docs, CRC32C: crc}, nil
}

// openShard opens a shard, checks its header against what the manifest
// says (m: tokenizer and vocab; s: token count) and the file's size, and
// returns the file positioned at the payload.
func openShard(path string, m *TokenManifest, s TokenShard) (*os.File, shardHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, shardHeader{}, fmt.Errorf("token shard listed in %s: %w", filepath.Join(m.Dir, ManifestName), err)
	}
	h, err := checkShard(f, path, m, s)
	if err != nil {
		f.Close()
		return nil, h, err
	}
	return f, h, nil
}

func checkShard(f *os.File, path string, m *TokenManifest, s TokenShard) (shardHeader, error) {
	st, err := f.Stat()
	if err != nil {
		return shardHeader{}, err
	}
	size := st.Size()
	hb := make([]byte, shardHeaderSize)
	if n, _ := io.ReadFull(f, hb); int64(n) < shardHeaderSize {
		return shardHeader{}, shardErr(path, int64(n), "truncated: the file ends inside the %d-byte header", shardHeaderSize)
	}
	h, err := decodeShardHeader(path, hb)
	if err != nil {
		return h, err
	}
	if h.tokenizer != m.Tokenizer || int(h.vocab) != m.Vocab {
		off := int64(offVocab)
		if int(h.vocab) == m.Vocab {
			off = offTokenizer
		}
		return h, shardErr(path, off, "made with tokenizer %s (vocab %d), but %s says %s (vocab %d): shards of different tokenizers are mixed",
			h.tokenizer, h.vocab, ManifestName, m.Tokenizer, m.Vocab)
	}
	end := int64(shardHeaderSize) + int64(h.tokens)*int64(h.width)
	switch {
	case h.tokens > 1<<40:
		return h, shardErr(path, offTokens, "token count %d is not plausible", h.tokens)
	case size < end:
		return h, shardErr(path, size, "truncated: the header says %d tokens, which end at byte %d, but the file ends at byte %d", h.tokens, end, size)
	case size > end:
		return h, shardErr(path, end, "%d bytes after the %d tokens the header counts", size-end, h.tokens)
	case int64(h.tokens) != s.Tokens:
		return h, shardErr(path, offTokens, "%d tokens, but %s lists %d", h.tokens, ManifestName, s.Tokens)
	case h.payloadCRC != s.CRC32C:
		return h, shardErr(path, offPayload, "payload checksum %08x, but %s lists %08x: not the shard the manifest was written with", h.payloadCRC, ManifestName, s.CRC32C)
	}
	return h, nil
}

// readShard reads the shard at path into dst (exactly its token count long)
// and checks its payload's checksum and that every id is below the vocab.
// buf is scratch space of any even length > 0.
func readShard(path string, m *TokenManifest, s TokenShard, dst []uint16, buf []byte) error {
	f, h, err := openShard(path, m, s)
	if err != nil {
		return err
	}
	defer f.Close()
	crc, bad, err := readIDs(f, dst, buf, shardHeaderSize, uint16(min(h.vocab-1, 0xffff)), true)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	end := int64(shardHeaderSize) + 2*int64(len(dst))
	if crc != h.payloadCRC {
		what := ""
		if bad >= 0 {
			what = fmt.Sprintf("; the first id >= vocab %d is at byte %d", h.vocab, bad)
		}
		return shardErr(path, shardHeaderSize, "payload checksum mismatch over bytes [%d, %d) (stored %08x, computed %08x): the file is damaged%s",
			shardHeaderSize, end, h.payloadCRC, crc, what)
	}
	if bad >= 0 {
		return shardErr(path, bad, "token id %d is not below the vocab %d", binary.LittleEndian.Uint16(peek(f, bad)), h.vocab)
	}
	return nil
}

// readIDs fills dst with little-endian uint16 ids read from r (whose bytes
// start at file offset base), returning the CRC-32C of the bytes when
// withCRC, and the file offset of the first id > maxID (-1 if none).
func readIDs(r io.Reader, dst []uint16, buf []byte, base int64, maxID uint16, withCRC bool) (crc uint32, bad int64, err error) {
	bad = -1
	pos := 0
	for pos < len(dst) {
		n := min(len(dst)-pos, len(buf)/2)
		b := buf[:2*n]
		if _, err := io.ReadFull(r, b); err != nil {
			return 0, -1, fmt.Errorf("reading tokens at byte %d: %w", base+2*int64(pos), err)
		}
		if withCRC {
			crc = crc32.Update(crc, castagnoli, b)
		}
		out := dst[pos : pos+n]
		var hi uint16
		for i := range out {
			v := binary.LittleEndian.Uint16(b[2*i:])
			out[i] = v
			hi = max(hi, v)
		}
		if hi > maxID && bad < 0 {
			for i, v := range out {
				if v > maxID {
					bad = base + 2*int64(pos+i)
					break
				}
			}
		}
		pos += n
	}
	return crc, bad, nil
}

// peek returns the 2 bytes of f at off (zeros if they cannot be read).
func peek(f *os.File, off int64) []byte {
	b := make([]byte, 2)
	f.ReadAt(b, off)
	return b
}

// readManifest reads dir's dataset.json and checks it is one this build
// reads and that it is self-consistent.
func readManifest(dir string) (*TokenManifest, error) {
	path := filepath.Join(dir, ManifestName)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := &TokenManifest{}
	if err := json.Unmarshal(b, m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s: byte %d: %w", path, se.Offset, err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.Dir, m.Layout = dir, "loom"
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
	}
	switch {
	case m.Format != manifestFormat:
		return nil, bad("format %q, want %q", m.Format, manifestFormat)
	case m.Version != shardVersion:
		return nil, bad("unknown version %d (this build reads version %d)", m.Version, shardVersion)
	case m.Tokenizer == "":
		return nil, bad("no tokenizer")
	case m.Vocab < 1 || m.Vocab > 1<<16:
		return nil, bad("vocab %d: this build loads vocabs of 1 to 65536 (2-byte token ids)", m.Vocab)
	case m.TokenBytes != 2:
		return nil, bad("token_bytes %d, want 2", m.TokenBytes)
	}
	if tok, err := NewTokenizer(m.Tokenizer); err == nil && tok.Vocab() != m.Vocab {
		return nil, bad("tokenizer %s has vocab %d, the manifest says %d", m.Tokenizer, tok.Vocab(), m.Vocab)
	}
	for _, sp := range []struct {
		name string
		s    *TokenSplitInfo
	}{{"train", &m.Train}, {"val", &m.Val}} {
		var sum int64
		for _, sh := range sp.s.Shards {
			if sh.File == "" || sh.File != filepath.Base(sh.File) || sh.File == "." || sh.File == ".." || strings.ContainsAny(sh.File, `/\`) {
				return nil, bad("%s shard %q is not a file name in the dataset directory", sp.name, sh.File)
			}
			if sh.Tokens < 0 {
				return nil, bad("%s shard %s: %d tokens", sp.name, sh.File, sh.Tokens)
			}
			sum += sh.Tokens
		}
		if sum != sp.s.Tokens {
			return nil, bad("%s: %d tokens, but its shards hold %d", sp.name, sp.s.Tokens, sum)
		}
	}
	return m, nil
}

// StatTokens describes the token dataset at path without loading it: a
// directory `loom data prepare` wrote (its dataset.json, each shard's
// header checked against it), or llm.c (`*_train*.bin`, `*_val*.bin`) or
// nanoGPT (`train.bin`, `val.bin`) files of GPT-2 tokens (their headers or
// sizes read).
func StatTokens(path string) (*TokenManifest, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tokens dataset %s does not exist: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("tokens dataset: %w", err)
	}
	dir := path
	if !st.IsDir() {
		if filepath.Base(path) != ManifestName {
			return nil, fmt.Errorf("tokens dataset %s is a file: give the directory `loom data prepare --out` wrote (holding %s), or one holding llm.c or nanoGPT .bin files", path, ManifestName)
		}
		dir = filepath.Dir(path)
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestName)); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tokens dataset: %w", err)
		}
		return statBinDir(dir)
	}
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	for _, sp := range []TokenSplitInfo{m.Train, m.Val} {
		for _, sh := range sp.Shards {
			f, _, err := openShard(filepath.Join(dir, sh.File), m, sh)
			if err != nil {
				return nil, err
			}
			f.Close()
		}
	}
	return m, nil
}

// LoadTokens reads the token dataset at path (see StatTokens) for a model
// with the given context length: each split's shards concatenated in
// manifest order (llm.c shards in sorted name order), cut into windows as
// LoadText's are. Every shard is checked first: its header against the
// manifest, its size, its payload's checksum, every id below the vocab; a
// problem is a *ShardError naming the file and byte offset. Both splits
// must hold at least context+1 tokens.
func LoadTokens(path string, context int) (*TextSplit, error) {
	if context < 1 {
		return nil, fmt.Errorf("tokens dataset %s: context must be >= 1, got %d", path, context)
	}
	m, err := StatTokens(path)
	if err != nil {
		return nil, err
	}
	s := &TextSplit{Vocab: m.Vocab, Tokenizer: m.Tokenizer, Train: &TextSet{}, Validation: &TextSet{}}
	buf := make([]byte, 4<<20)
	var shards [2]int
	for k, sp := range []struct {
		name string
		info TokenSplitInfo
		set  *TextSet
	}{{"training", m.Train, s.Train}, {"validation", m.Val, s.Validation}} {
		set := sp.set
		set.Tokens = make([]uint16, sp.info.Tokens)
		off := int64(0)
		for _, sh := range sp.info.Shards {
			file := filepath.Join(m.Dir, sh.File)
			dst := set.Tokens[off : off+sh.Tokens]
			if m.Layout == "loom" {
				err = readShard(file, m, sh, dst, buf)
			} else {
				err = readBin(file, m.Layout, dst, buf)
			}
			if err != nil {
				return nil, err
			}
			set.Files = append(set.Files, file)
			off += sh.Tokens
		}
		shards[k] = len(sp.info.Shards)
		if n := len(set.Tokens); n < context+1 {
			return nil, fmt.Errorf("context %d needs at least %d tokens; %s's %s split has %d", context, context+1, path, sp.name, n)
		}
		set.Context = context
		set.N = (len(set.Tokens) - 1) / context
	}
	s.Source = fmt.Sprintf("%s (%s tokens, tokenizer %s, vocab %d: %d+%d tokens in %d+%d shards, %d+%d windows of %d)",
		path, m.Layout, m.Tokenizer, m.Vocab, len(s.Train.Tokens), len(s.Validation.Tokens), shards[0], shards[1], s.Train.N, s.Validation.N, context)
	return s, nil
}
