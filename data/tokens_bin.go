package data

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The .bin files of llm.c and nanoGPT hold GPT-2 token ids as uint16:
//
//   - llm.c (dev/data/data_common.py write_datafile): a header of 256
//     little-endian int32 (header[0] = 20240520, header[1] = 1 (the version:
//     uint16 ids), header[2] = the token count), then the ids. Files are
//     named like tinyshakespeare_train.bin, fineweb_val_000000.bin.
//   - nanoGPT (data/*/prepare.py): train.bin and val.bin, the raw ids with
//     no header.
const (
	llmcMagic       = 20240520
	llmcMagicLlama3 = 20240801 // uint32 ids of Llama 3's vocab: not loaded
	llmcVersion     = 1
	llmcHeaderSize  = 256 * 4
)

// statBinDir describes dir's llm.c or nanoGPT files as a manifest.
func statBinDir(dir string) (*TokenManifest, error) {
	m := &TokenManifest{Format: manifestFormat, Version: shardVersion, Tokenizer: TokenizerGPT2, Vocab: gpt2Vocab, EOT: gpt2EOT,
		TokenBytes: 2, Inputs: []string{dir}, Dir: dir}
	train, _ := filepath.Glob(filepath.Join(dir, "*_train*.bin"))
	val, _ := filepath.Glob(filepath.Join(dir, "*_val*.bin"))
	switch {
	case len(train) > 0 || len(val) > 0:
		m.Layout, m.Split = "llm.c", "llm.c's *_train*.bin and *_val*.bin files"
		if len(train) == 0 || len(val) == 0 {
			return nil, fmt.Errorf("tokens dataset %s has %d llm.c training files (*_train*.bin) and %d validation files (*_val*.bin): it needs both", dir, len(train), len(val))
		}
	default:
		train, val = []string{filepath.Join(dir, "train.bin")}, []string{filepath.Join(dir, "val.bin")}
		_, e1 := os.Stat(train[0])
		_, e2 := os.Stat(val[0])
		if e1 != nil || e2 != nil {
			return nil, fmt.Errorf("tokens dataset %s holds no %s (run `loom data prepare ... --out %s`), no llm.c *_train*.bin and *_val*.bin files, and no nanoGPT train.bin and val.bin",
				dir, ManifestName, dir)
		}
		m.Layout, m.Split = "nanogpt", "nanoGPT's train.bin and val.bin"
	}
	for _, sp := range []struct {
		files []string
		info  *TokenSplitInfo
	}{{train, &m.Train}, {val, &m.Val}} {
		for _, f := range sp.files {
			_, n, err := binLayout(f, m.Layout)
			if err != nil {
				return nil, err
			}
			sp.info.Shards = append(sp.info.Shards, TokenShard{File: filepath.Base(f), Tokens: n})
			sp.info.Tokens += n
		}
	}
	return m, nil
}

// binLayout reads a .bin file's header, if it has one: the byte offset of
// its ids (0 or llmcHeaderSize) and their count, checked against the file's
// size.
func binLayout(path, layout string) (offset, tokens int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("tokens dataset: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	size := st.Size()
	hdr := make([]byte, llmcHeaderSize)
	n, _ := io.ReadFull(f, hdr)
	le := binary.LittleEndian
	magic := uint32(0)
	if n >= 4 {
		magic = le.Uint32(hdr)
	}
	switch {
	case magic == llmcMagic:
		if n < llmcHeaderSize {
			return 0, 0, shardErr(path, int64(n), "truncated: the file ends inside llm.c's %d-byte header", llmcHeaderSize)
		}
		if v := le.Uint32(hdr[4:]); v != llmcVersion {
			return 0, 0, shardErr(path, 4, "llm.c version %d; this build reads version %d (GPT-2's uint16 ids)", v, llmcVersion)
		}
		count := int64(int32(le.Uint32(hdr[8:])))
		if count < 0 {
			return 0, 0, shardErr(path, 8, "token count %d", count)
		}
		end := llmcHeaderSize + 2*count
		switch {
		case size < end:
			return 0, 0, shardErr(path, size, "truncated: the llm.c header says %d tokens, which end at byte %d, but the file ends at byte %d", count, end, size)
		case size > end:
			return 0, 0, shardErr(path, end, "%d bytes after the %d tokens the llm.c header counts", size-end, count)
		}
		return llmcHeaderSize, count, nil
	case magic == llmcMagicLlama3:
		return 0, 0, shardErr(path, 0, "an llm.c Llama 3 file (magic %d, uint32 token ids): this build loads GPT-2's uint16 ids only", magic)
	case layout == "llm.c":
		return 0, 0, shardErr(path, 0, "bad magic %d, want llm.c's %d", magic, llmcMagic)
	}
	if size%2 != 0 {
		return 0, 0, shardErr(path, size-1, "an odd number of bytes (%d): nanoGPT files are whole uint16 token ids; the file is truncated", size)
	}
	return 0, size / 2, nil
}

// readBin reads the ids of a .bin file into dst (exactly their count long)
// and checks that each is a GPT-2 id.
func readBin(path, layout string, dst []uint16, buf []byte) error {
	off, n, err := binLayout(path, layout)
	if err != nil {
		return err
	}
	if n != int64(len(dst)) {
		return shardErr(path, 8, "%d tokens, %d when the dataset was described: the file changed", n, len(dst))
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, bad, err := readIDs(f, dst, buf, off, gpt2Vocab-1, false)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bad >= 0 {
		return shardErr(path, bad, "token id %d is not below GPT-2's vocab %d", binary.LittleEndian.Uint16(peek(f, bad)), gpt2Vocab)
	}
	return nil
}
