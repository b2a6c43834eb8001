package data

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// tb is byte-level tokens as the bytes they are.
func tb(ids []uint16) []byte {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return b
}

// tu16 is s's bytes as byte-level tokens.
func tu16(s string) []uint16 {
	ids := make([]uint16, len(s))
	for i := range len(s) {
		ids[i] = uint16(s[i])
	}
	return ids
}

func TestLoadTextSingleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.txt")
	text := make([]byte, 1000)
	for i := range text {
		text[i] = byte('a' + i%26)
	}
	text[999] = '\n'
	writeFile(t, path, text)
	s, err := LoadText(path, 8)
	if err != nil {
		t.Fatal(err)
	}
	// The last 10% of the bytes is validation; together they are the file.
	if !bytes.Equal(tb(s.Train.Tokens), text[:900]) || !bytes.Equal(tb(s.Validation.Tokens), text[900:]) {
		t.Fatalf("split: %d + %d tokens", len(s.Train.Tokens), len(s.Validation.Tokens))
	}
	if s.Train.N != 899/8 || s.Validation.N != 99/8 || s.Vocab != 256 || s.Train.NumTokens() != 900 {
		t.Fatalf("N = %d, %d", s.Train.N, s.Validation.N)
	}
	if !strings.Contains(s.Source, path) {
		t.Fatalf("Source %q", s.Source)
	}
	// Appending to the training tokens must not write into validation.
	_ = append(s.Train.Tokens, 'X')
	if s.Validation.Tokens[0] != uint16(text[900]) {
		t.Fatal("train and validation share a backing array")
	}
	again, _ := LoadText(path, 8)
	if !reflect.DeepEqual(again, s) {
		t.Fatal("not deterministic")
	}
}

func TestTextWindowBoundaries(t *testing.T) {
	tok := tu16("0123456789abcdefghij") // 20 tokens
	s := &TextSet{Tokens: tok, Context: 4, N: (len(tok) - 1) / 4}
	if s.N != 4 {
		t.Fatalf("N = %d", s.N)
	}
	in, tg := make([]int32, 4), make([]int32, 4)
	for i, want := range []string{"01234", "45678", "89abc", "cdefg"} {
		s.Window(i, in, tg)
		for k := 0; k < 4; k++ {
			if in[k] != int32(want[k]) || tg[k] != int32(want[k+1]) {
				t.Fatalf("window %d: inputs %v targets %v, want %q", i, in, tg, want)
			}
		}
		if string(tb(s.Span(i))) != want {
			t.Fatalf("span %d = %q", i, tb(s.Span(i)))
		}
	}
	// The remainder "hij" (one short of a window) is never read; i = N panics.
	defer func() {
		if recover() == nil {
			t.Fatal("window N did not panic")
		}
	}()
	s.Window(4, in, tg)
}

func TestLoadTextDirSplitsByDocument(t *testing.T) {
	dir := t.TempDir()
	var want []string
	for i := 0; i < 23; i++ {
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i/5), fmt.Sprintf("f%02d.txt", i))
		body := strings.Repeat(fmt.Sprintf("doc %02d. ", i), 20)
		if i == 7 {
			body += "\n" // already ends in a newline: no separator added
		}
		writeFile(t, p, []byte(body))
		want = append(want, p)
	}
	// Ignored: binary files, empty files, symlinks (including a loop).
	writeFile(t, filepath.Join(dir, "blob.bin"), []byte("GIF89a\x00\x01\x02"))
	writeFile(t, filepath.Join(dir, "d00", "empty"), nil)
	if err := os.Symlink(want[0], filepath.Join(dir, "link.txt")); err != nil {
		t.Fatal(err)
	}
	os.Symlink(dir, filepath.Join(dir, "d01", "loop"))

	s, err := LoadText(dir, 16)
	if err != nil {
		t.Fatal(err)
	}
	var wantVal, wantTrain []string
	for i, p := range want {
		if i%10 == 9 {
			wantVal = append(wantVal, p)
		} else {
			wantTrain = append(wantTrain, p)
		}
	}
	if !slices.Equal(s.Validation.Files, wantVal) || !slices.Equal(s.Train.Files, wantTrain) {
		t.Fatalf("files:\ntrain %v\nval %v", s.Train.Files, s.Validation.Files)
	}
	// Documents are whole and in order, separated by one newline each.
	var tr, va bytes.Buffer
	for _, p := range want {
		b, _ := os.ReadFile(p)
		buf := &tr
		if slices.Contains(wantVal, p) {
			buf = &va
		}
		buf.Write(b)
		if b[len(b)-1] != '\n' {
			buf.WriteByte('\n')
		}
	}
	if !bytes.Equal(tb(s.Train.Tokens), tr.Bytes()) || !bytes.Equal(tb(s.Validation.Tokens), va.Bytes()) {
		t.Fatal("tokens are not the concatenated documents")
	}
	if bytes.IndexByte(tb(s.Train.Tokens), 0) >= 0 || bytes.Contains(tb(s.Train.Tokens), []byte("GIF89a")) {
		t.Fatal("binary file was read")
	}
	// Disjoint: no validation document's text appears in training.
	for _, p := range wantVal {
		b, _ := os.ReadFile(p)
		if bytes.Contains(tb(s.Train.Tokens), b[:20]) {
			t.Fatalf("%s is in both splits", p)
		}
	}
	again, err := LoadText(dir, 16)
	if err != nil || !reflect.DeepEqual(again, s) {
		t.Fatal("not deterministic")
	}
}

func TestLoadTextFewFilesSplitsBytes(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a"), bytes.Repeat([]byte("a"), 99))
	writeFile(t, filepath.Join(dir, "b"), bytes.Repeat([]byte("b"), 99))
	s, err := LoadText(dir, 4)
	if err != nil {
		t.Fatal(err)
	}
	// 200 bytes (each file gets a newline): the last 20 are validation.
	if len(s.Train.Tokens) != 180 || len(s.Validation.Tokens) != 20 || string(tb(s.Validation.Tokens)) != strings.Repeat("b", 19)+"\n" {
		t.Fatalf("split %d + %d: %q", len(s.Train.Tokens), len(s.Validation.Tokens), tb(s.Validation.Tokens))
	}
	if !slices.Equal(s.Train.Files, []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}) || !slices.Equal(s.Validation.Files, []string{filepath.Join(dir, "b")}) {
		t.Fatalf("files %v %v", s.Train.Files, s.Validation.Files)
	}
}

func TestLoadTextErrors(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.txt")
	writeFile(t, short, bytes.Repeat([]byte("x"), 8000)) // + "\n": 7201 training, 800 validation
	_, err := LoadText(short, 1024)
	if want := "context 1024 needs at least 1025 tokens; " + short + "'s validation split has 800"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	_, err = LoadText(short, 7500)
	if err == nil || !strings.Contains(err.Error(), "training split has 7201") {
		t.Fatalf("short training: %v", err)
	}
	missing := filepath.Join(dir, "nope")
	_, err = LoadText(missing, 8)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing+" does not exist") {
		t.Fatalf("missing: %v", err)
	}
	bin := filepath.Join(dir, "bin", "x.bin")
	writeFile(t, bin, []byte{1, 0, 2})
	_, err = LoadText(filepath.Dir(bin), 8)
	if want := "no readable text files under " + filepath.Dir(bin); err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	if _, err = LoadText(bin, 8); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("binary file: %v", err)
	}
	if _, err = LoadText(short, 0); err == nil || !strings.Contains(err.Error(), "context must be >= 1") {
		t.Fatalf("context 0: %v", err)
	}
}

func TestSamplerCoversTextWindowsOncePerEpoch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.txt")
	writeFile(t, path, bytes.Repeat([]byte("the quick brown fox. "), 200))
	s, err := LoadText(path, 32)
	if err != nil {
		t.Fatal(err)
	}
	n := s.Train.N
	sm := NewSampler(n, 7)
	in, tg := make([]int32, 32), make([]int32, 32)
	for epoch := 0; epoch < 3; epoch++ {
		seen := make([]int, n)
		var got []int
		for len(got) < n {
			batch := sm.Next(nil, 16)
			for _, i := range batch {
				s.Train.Window(i, in, tg)
				seen[i]++
			}
			got = append(got, batch...)
		}
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("epoch %d: window %d seen %d times", epoch, i, c)
			}
		}
		if sm.Position() != (Position{Epoch: epoch + 1}) {
			t.Fatalf("after epoch %d at %+v", epoch, sm.Position())
		}
	}
}

func TestLoadTextCommonLicenses(t *testing.T) {
	const dir = "/usr/share/common-licenses"
	if _, err := os.Stat(dir); err != nil {
		t.Skip(err)
	}
	s, err := LoadText(dir, 128)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Validation.Files) == 0 || s.Train.N < 100 || s.Validation.N < 1 {
		t.Fatalf("%s", s.Source)
	}
	t.Log(s.Source)
}
