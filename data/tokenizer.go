package data

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/tiktoken-go/tokenizer"
)

// Tokenizer turns text into token ids and back. Implementations are safe
// for concurrent use: `loom data prepare` encodes documents on several
// goroutines with one instance.
type Tokenizer interface {
	// Name is what shard headers and dataset.json record: "byte" or "gpt2".
	Name() string
	// Vocab is the number of token ids, [0, Vocab).
	Vocab() int
	// Encode returns text's token ids. Text that looks like a special token
	// ("<|endoftext|>" inside a file) is encoded as ordinary text, never as
	// the special id: only the dataset writer places EOT ids.
	Encode(text string) []int
	// Decode returns the bytes the ids stand for, concatenated. It never
	// panics: an id outside [0, Vocab) decodes as U+FFFD, and EOT as
	// "<|endoftext|>". A slice that cuts a multi-byte character (BPE
	// tokens can hold part of one) gives invalid UTF-8 at the cut; callers
	// that print a stream of tokens decode the whole stream, or clean the
	// pieces with strings.ToValidUTF8.
	Decode(ids []int) string
	// EOT is the id that separates documents (50256, <|endoftext|>, for
	// gpt2), or -1 when there is none (byte: documents are separated by
	// '\n', as in data.LoadText).
	EOT() int
}

// Tokenizer names, as NewTokenizer takes them.
const (
	TokenizerByte = "byte"
	TokenizerGPT2 = "gpt2"
)

// TokenizerNames lists what NewTokenizer knows, for help text and errors.
var TokenizerNames = []string{TokenizerByte, TokenizerGPT2}

// NewTokenizer returns the named tokenizer: "byte" (one token per byte,
// vocab 256) or "gpt2" (GPT-2's byte-level BPE, vocab 50257).
func NewTokenizer(name string) (Tokenizer, error) {
	switch name {
	case TokenizerByte:
		return byteTokenizer{}, nil
	case TokenizerGPT2:
		return gpt2Codec()
	}
	return nil, fmt.Errorf("tokenizer %q unknown (want %s)", name, strings.Join(TokenizerNames, " or "))
}

// byteTokenizer is the byte-level tokenizer of data.LoadText: token id =
// byte value.
type byteTokenizer struct{}

func (byteTokenizer) Name() string { return TokenizerByte }
func (byteTokenizer) Vocab() int   { return TextVocab }
func (byteTokenizer) EOT() int     { return -1 }

func (byteTokenizer) Encode(text string) []int {
	ids := make([]int, len(text))
	for i := 0; i < len(text); i++ {
		ids[i] = int(text[i])
	}
	return ids
}

func (byteTokenizer) Decode(ids []int) string {
	var b strings.Builder
	b.Grow(len(ids))
	for _, id := range ids {
		if id < 0 || id >= TextVocab {
			b.WriteRune(utf8.RuneError)
			continue
		}
		b.WriteByte(byte(id))
	}
	return b.String()
}

// GPT-2's vocabulary: 50000 merges + 256 bytes + <|endoftext|>.
const (
	gpt2Vocab = 50257
	gpt2EOT   = 50256
	eotText   = "<|endoftext|>"
)

// gpt2Tokenizer is GPT-2's BPE through github.com/tiktoken-go/tokenizer,
// whose r50k_base encoding is GPT-2's (tokenizer.GPT2Enc is a name Get
// does not take). The codec's Encode never consults its special tokens: it
// splits with GPT-2's pattern and merges, so "<|endoftext|>" in a file
// becomes "<", "|", "endoftext", "|", ">" (tiktoken's encode_ordinary).
// Its Decode knows no id for EOT and fails on unknown ids, so Decode here
// handles both before calling it.
type gpt2Tokenizer struct{ c tokenizer.Codec }

var gpt2 struct {
	once sync.Once
	tok  *gpt2Tokenizer
	err  error
}

// gpt2Codec returns the process's one GPT-2 codec. Measured here: the
// first tokenizer.Get costs ~3 ms (the library builds its 50k-entry
// vocabulary map once per process), later ones ~1 µs, and each instance's
// first Decode ~1 ms (a reverse vocabulary); so one instance is shared,
// which is safe for concurrent use (read-only maps, regexp2's Regexp, a
// sync.Once).
func gpt2Codec() (*gpt2Tokenizer, error) {
	gpt2.once.Do(func() {
		c, err := tokenizer.Get(tokenizer.R50kBase)
		if err != nil {
			gpt2.err = fmt.Errorf("gpt2 tokenizer: %w", err)
			return
		}
		gpt2.tok = &gpt2Tokenizer{c: c}
	})
	return gpt2.tok, gpt2.err
}

func (*gpt2Tokenizer) Name() string { return TokenizerGPT2 }
func (*gpt2Tokenizer) Vocab() int   { return gpt2Vocab }
func (*gpt2Tokenizer) EOT() int     { return gpt2EOT }

func (g *gpt2Tokenizer) Encode(text string) []int {
	ids, err := g.encode(text)
	if err != nil {
		// The codec errs only on a regexp match timeout (none is set) or
		// invalid UTF-8 in strict mode (the mode is the default, none).
		panic(fmt.Sprintf("data: gpt2 tokenizer: %v", err))
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// encode is Encode with the codec's error, for the dataset writer.
func (g *gpt2Tokenizer) encode(text string) ([]uint, error) {
	ids, _, err := g.c.Encode(text)
	return ids, err
}

func (g *gpt2Tokenizer) Decode(ids []int) string {
	var b strings.Builder
	run := make([]uint, 0, len(ids))
	flush := func() {
		if len(run) == 0 {
			return
		}
		if s, err := g.c.Decode(run); err == nil {
			b.WriteString(s)
		} else { // not expected: every id in [0, 50256) has a token
			for _, id := range run {
				s, err := g.c.Decode([]uint{id})
				if err != nil {
					s = string(utf8.RuneError)
				}
				b.WriteString(s)
			}
		}
		run = run[:0]
	}
	for _, id := range ids {
		switch {
		case id == gpt2EOT:
			flush()
			b.WriteString(eotText)
		case id < 0 || id >= gpt2EOT:
			flush()
			b.WriteRune(utf8.RuneError)
		default:
			run = append(run, uint(id))
		}
	}
	flush()
	return b.String()
}

// appendEncoded appends text's token ids to dst, as uint16 (every
// tokenizer here has a vocab of at most 65536).
func appendEncoded(tok Tokenizer, dst []uint16, text string) ([]uint16, error) {
	switch t := tok.(type) {
	case byteTokenizer:
		for i := 0; i < len(text); i++ {
			dst = append(dst, uint16(text[i]))
		}
		return dst, nil
	case *gpt2Tokenizer:
		ids, err := t.encode(text)
		if err != nil {
			return dst, err
		}
		for _, id := range ids {
			dst = append(dst, uint16(id))
		}
		return dst, nil
	}
	for _, id := range tok.Encode(text) {
		dst = append(dst, uint16(id))
	}
	return dst, nil
}
