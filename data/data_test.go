package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeIDX(t *testing.T, path string, gz bool, dims []int, payload []byte) {
	t.Helper()
	var b bytes.Buffer
	b.Write([]byte{0, 0, 8, byte(len(dims))})
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, uint32(d))
	}
	b.Write(payload)
	data := b.Bytes()
	if gz {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		w.Write(data)
		w.Close()
		data = z.Bytes()
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadIDXDirPlainAndGzip(t *testing.T) {
	dir := t.TempDir()
	img := []byte{0, 255, 10, 20, 30, 40, 50, 60}
	writeIDX(t, filepath.Join(dir, "train-images-idx3-ubyte.gz"), true, []int{2, 2, 2}, img)
	writeIDX(t, filepath.Join(dir, "train-labels-idx1-ubyte"), false, []int{2}, []byte{3, 1})
	writeIDX(t, filepath.Join(dir, "t10k-images-idx3-ubyte"), false, []int{1, 2, 2}, img[:4])
	writeIDX(t, filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"), true, []int{1}, []byte{0})
	s, err := LoadIDXDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Train.N != 2 || s.Train.Dim != 4 || s.Test.N != 1 || s.Train.Classes != 4 || s.Train.Y[0] != 3 {
		t.Fatalf("unexpected dataset %+v", s.Train)
	}
	var mean float64
	for _, v := range s.Train.X {
		mean += float64(v)
	}
	if mean/8 > 1e-6 || mean/8 < -1e-6 {
		t.Errorf("training set not standardised: mean %g", mean/8)
	}
}

func TestIDXErrorsAreClear(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadIDXDir(dir); err == nil || !strings.Contains(err.Error(), "train-images-idx3-ubyte") {
		t.Fatalf("missing file error should name it, got %v", err)
	}
	p := filepath.Join(dir, "x")
	writeIDX(t, p, false, []int{10, 28, 28}, make([]byte, 100))
	if _, err := ReadIDXFile(p); err == nil || !strings.Contains(err.Error(), "want 7840 bytes") {
		t.Fatalf("truncated file: %v", err)
	}
	os.WriteFile(p, []byte("hello world"), 0o644)
	if _, err := ReadIDXFile(p); err == nil || !strings.Contains(err.Error(), "not an IDX") {
		t.Fatalf("garbage file: %v", err)
	}
}

func TestMNISTFromModule(t *testing.T) {
	dir, err := MNISTDir()
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadIDXDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := TrainSize("mnist", ""); err != nil || n != 60000 {
		t.Fatalf("TrainSize = %d, %v", n, err)
	}
	if s.Train.N != 60000 || s.Test.N != 10000 || s.Train.Dim != 784 || s.Train.Classes != 10 {
		t.Fatalf("MNIST shapes: train %d×%d test %d classes %d", s.Train.N, s.Train.Dim, s.Test.N, s.Train.Classes)
	}
}

func TestSamplerDeterministicAndExactlyOnce(t *testing.T) {
	const n = 1000
	a := NewSampler(n, 7)
	var got []int
	for a.Position().Epoch == 0 {
		got = a.Next(got, 64)
	}
	if len(got) != n {
		t.Fatalf("epoch yielded %d samples, want %d", len(got), n)
	}
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	for i, v := range sorted {
		if v != i {
			t.Fatalf("sample %d missing or repeated", i)
		}
	}
	if !slices.Equal(got, Permutation(n, 7, 0)) {
		t.Fatal("order differs from Permutation(seed, epoch)")
	}
	if slices.Equal(Permutation(n, 7, 1), Permutation(n, 7, 0)) || slices.Equal(Permutation(n, 8, 0), Permutation(n, 7, 0)) {
		t.Fatal("order does not depend on epoch and seed")
	}
}

func TestSamplerResumeContinuesSameSequence(t *testing.T) {
	const n = 300
	straight := NewSampler(n, 3)
	var want []int
	for i := 0; i < 12; i++ {
		want = straight.Next(want, 64)
	}
	first := NewSampler(n, 3)
	var got []int
	for i := 0; i < 5; i++ {
		got = first.Next(got, 64)
	}
	resumed := NewSampler(n, 3)
	if err := resumed.Seek(first.Position()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 7; i++ {
		got = resumed.Next(got, 64)
	}
	if !slices.Equal(got, want) {
		t.Fatal("resumed sampler diverged from the straight run")
	}
	if err := resumed.Seek(Position{Epoch: 0, Offset: n + 1}); err == nil {
		t.Fatal("out-of-range position accepted")
	}
}
