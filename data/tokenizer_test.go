package data

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// GPT-2's BPE round-trips Go source (this package's own files, UTF-8
// comments included) and matches the ids every GPT-2 tokenizer gives.
func TestGPT2TokenizerRoundTrip(t *testing.T) {
	t0 := time.Now()
	tok, err := NewTokenizer("gpt2")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gpt2 codec built in %v", time.Since(t0))
	if tok.Name() != "gpt2" || tok.Vocab() != 50257 || tok.EOT() != 50256 {
		t.Fatalf("gpt2: %s %d %d", tok.Name(), tok.Vocab(), tok.EOT())
	}
	again, _ := NewTokenizer("gpt2")
	if again != tok {
		t.Error("the gpt2 codec is not shared")
	}
	if got := tok.Encode("hello world"); !slices.Equal(got, []int{31373, 995}) {
		t.Errorf("hello world = %v, want GPT-2's [31373 995]", got)
	}
	files, _ := filepath.Glob("*.go")
	if len(files) < 3 {
		t.Fatal("no Go files here")
	}
	var total, ntok int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ids := tok.Encode(string(b))
		for _, id := range ids {
			if id < 0 || id >= gpt2EOT {
				t.Fatalf("%s: id %d", f, id)
			}
		}
		if got := tok.Decode(ids); got != string(b) {
			t.Fatalf("%s does not round-trip", f)
		}
		total += len(b)
		ntok += len(ids)
	}
	if r := float64(total) / float64(ntok); r < 2 || r > 6 {
		t.Errorf("%.2f bytes per token: not BPE", r)
	}
	// "<|endoftext|>" in a file is text, not the special id.
	src := "a <|endoftext|> b"
	ids := tok.Encode(src)
	if slices.Contains(ids, 50256) || tok.Decode(ids) != src {
		t.Errorf("special token in text: %v → %q", ids, tok.Decode(ids))
	}
	if got := tok.Decode([]int{31373, 50256, 995}); got != "hello<|endoftext|> world" {
		t.Errorf("Decode with EOT = %q", got)
	}
	// Ids outside the vocab decode as U+FFFD; nothing panics.
	if got := tok.Decode([]int{-1, 31373, 50257, 1 << 40}); got != "\uFFFDhello\uFFFD\uFFFD" {
		t.Errorf("Decode of bad ids = %q", got)
	}
	// A piece of a multi-byte character decodes to its bytes.
	ids = tok.Encode("é")
	if s := tok.Decode(ids[:1]); len(ids) > 1 && utf8.ValidString(s) {
		t.Logf("é is %v; its first token decodes to %q", ids, s)
	}
}

func TestByteTokenizer(t *testing.T) {
	tok, err := NewTokenizer("byte")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Name() != "byte" || tok.Vocab() != 256 || tok.EOT() != -1 {
		t.Fatalf("byte: %s %d %d", tok.Name(), tok.Vocab(), tok.EOT())
	}
	s := "héllo\x00\xff"
	ids := tok.Encode(s)
	if len(ids) != len(s) || ids[1] != 0xc3 || tok.Decode(ids) != s {
		t.Fatalf("%v → %q", ids, tok.Decode(ids))
	}
	if got := tok.Decode([]int{'a', 256, -3, 'b'}); got != "a\uFFFD\uFFFDb" {
		t.Errorf("Decode of bad ids = %q", got)
	}
	if _, err := NewTokenizer("gpt-2"); err == nil || !strings.Contains(err.Error(), "byte or gpt2") {
		t.Errorf("unknown tokenizer: %v", err)
	}
}

// Encoding with the shared codec from many goroutines gives the ids one
// goroutine does (run with -race).
func TestGPT2Concurrent(t *testing.T) {
	tok, _ := NewTokenizer("gpt2")
	b, err := os.ReadFile("tokens.go")
	if err != nil {
		t.Fatal(err)
	}
	want := tok.Encode(string(b))
	errs := make(chan string, 4)
	for range 4 {
		go func() {
			if got := tok.Encode(string(b)); !slices.Equal(got, want) {
				errs <- "differs"
				return
			}
			if tok.Decode(want) != string(b) {
				errs <- "decode differs"
				return
			}
			errs <- ""
		}()
	}
	for range 4 {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}
}
