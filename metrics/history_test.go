package metrics

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// writeHistory writes recs through a HistoryWriter to job's history under
// dir and returns the file.
func writeHistory(t *testing.T, dir, job string, recs ...Record) string {
	t.Helper()
	path := HistoryPath(dir, job)
	w := NewHistoryWriter(path, nil)
	for _, r := range recs {
		w.Write(r)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// ReadHistory finds the history from the file, the job directory or one of
// its checkpoint directories, keeps the last line of a step (a resumed run
// appends steps it logged before), and sorts by step.
func TestReadHistoryResolvesPathsAndDedups(t *testing.T) {
	dir := t.TempDir()
	first := []Record{{T: 1, Step: 1, Loss: 2.5, LR: 0.1}, {T: 2, Step: 2, Loss: 2.0}, {T: 3, Step: 3, Loss: 1.5}}
	writeHistory(t, dir, "job", first...)
	// The resumed run starts again at step 3 and evaluates there.
	path := writeHistory(t, dir, "job", Record{T: 4, Step: 3, Loss: 1.4, ValLoss: 1.6, ValAccuracy: 0.5}, Record{T: 5, Step: 4, Loss: 1.2})
	want := []Record{first[0], first[1], {T: 4, Step: 3, Loss: 1.4, ValLoss: 1.6, ValAccuracy: 0.5}, {T: 5, Step: 4, Loss: 1.2}}
	stepDir := filepath.Join(dir, "job", "step-00000004")
	if err := os.MkdirAll(stepDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, filepath.Join(dir, "job"), stepDir, stepDir + "/"} {
		got, err := ReadHistory(p)
		if err != nil {
			t.Fatalf("ReadHistory(%s): %v", p, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ReadHistory(%s) = %+v, want %+v", p, got, want)
		}
	}
	b, _ := os.ReadFile(path)
	if n := strings.Count(string(b), "\n"); n != 5 {
		t.Fatalf("%d lines, want the 5 appended:\n%s", n, b)
	}
}

// Optional fields are omitted when zero; non-finite values become 0.
func TestHistoryLineFields(t *testing.T) {
	path := writeHistory(t, t.TempDir(), "j",
		Record{T: 7, Step: 1, Epoch: 0, Loss: 0.5},
		Record{T: 8, Step: 2, Epoch: 1, Loss: 0.25, LR: 1e-3, GradNorm: math.Inf(1), SamplesPerS: 100, TokensPerS: 6400, Worker: "w0", Generation: 3})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"t":7,"step":1,"epoch":0,"loss":0.5}
{"t":8,"step":2,"epoch":1,"loss":0.25,"lr":0.001,"samples_per_s":100,"tokens_per_s":6400,"worker":"w0","generation":3}
`
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
}

// A line torn by a crash is skipped, and the next run's first line starts
// a line of its own.
func TestHistoryAfterTornLine(t *testing.T) {
	dir := t.TempDir()
	path := HistoryPath(dir, "j")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{\"t\":1,\"step\":1,\"epoch\":0,\"loss\":3}\n{\"t\":2,\"st"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeHistory(t, dir, "j", Record{T: 3, Step: 2, Loss: 2})
	got, err := ReadHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Step != 1 || got[1].Step != 2 || got[1].Loss != 2 {
		t.Fatalf("got %+v", got)
	}
}

// No file, a directory without one, or a file without records: an error
// that says so.
func TestReadHistoryErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.jsonl")
	if err := os.WriteFile(empty, []byte("not json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "nope"), "no such file or directory"},
		{dir, "want metrics.jsonl, a job directory holding it, or a step-NNNNNNNN checkpoint directory"},
		{empty, "the file holds no records (1 lines that are not JSON records)"},
	} {
		_, err := ReadHistory(tc.path)
		if !errors.Is(err, ErrNoHistory) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("ReadHistory(%s): error %v, want ErrNoHistory naming the path and %q", tc.path, err, tc.want)
		}
	}
}

// Lines reach the file within about flushEvery without Close.
func TestHistoryFlushesWithinASecond(t *testing.T) {
	path := HistoryPath(t.TempDir(), "j")
	w := NewHistoryWriter(path, nil)
	defer w.Close()
	w.Write(Record{T: 1, Step: 1, Loss: 1})
	deadline := time.Now().Add(flushEvery + 2*time.Second)
	for {
		if got, err := ReadHistory(path); err == nil && len(got) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing in %s %v after the write", path, flushEvery+2*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A history that cannot be written is logged once and then dropped.
func TestHistoryWriteFailureLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	w := NewHistoryWriter(filepath.Join(blocker, "job", HistoryFile), zap.New(core))
	for i := range 3 {
		w.Write(Record{Step: i + 1})
		w.flushTimer()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage("metrics history not written; training goes on without it").Len(); n != 1 || logs.Len() != 1 {
		t.Fatalf("%d warnings (%d logs), want 1: %v", n, logs.Len(), logs.All())
	}
}

// BenchmarkHistoryWrite is the per-step cost of the history (buffered; the
// flushes are amortised) and its allocations (none outside -race).
func BenchmarkHistoryWrite(b *testing.B) {
	w := NewHistoryWriter(HistoryPath(b.TempDir(), "j"), nil)
	defer w.Close()
	r := Record{T: 1, Loss: 1.25, LR: 3e-4, GradNorm: 0.5, SamplesPerS: 12345.6, Worker: "w0", Generation: 2}
	b.ReportAllocs()
	for b.Loop() {
		r.Step++
		w.Write(r)
	}
}
