package metrics

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
)

// HistoryWriter appends Records, one JSON line each, to a history file
// (ReadHistory reads it). Lines are buffered and written whole, in one
// write per flush, at least every flushEvery and on Close: several
// processes may append to one file in turn (the rank 0 of successive plan
// generations). The file is opened at the first Write. A failure to open or
// write is logged once and the writer then drops its records: the history
// never stops training. Safe for concurrent use.
type HistoryWriter struct {
	path string
	log  *zap.Logger

	mu     sync.Mutex
	f      *os.File
	buf    bytes.Buffer
	enc    *json.Encoder // into buf
	rec    Record        // encoded from here: no allocation per line
	timer  *time.Timer   // flushes buf; armed while it holds lines
	failed bool
	closed bool
}

// flushEvery is the longest a written record waits in the buffer.
const flushEvery = time.Second

// flushBytes is the buffered size at which Write flushes at once.
const flushBytes = 64 << 10

// NewHistoryWriter returns a writer appending to path (created, with its
// directory, at the first Write).
func NewHistoryWriter(path string, log *zap.Logger) *HistoryWriter {
	if log == nil {
		log = zap.NewNop()
	}
	w := &HistoryWriter{path: path, log: log}
	w.enc = json.NewEncoder(&w.buf)
	w.timer = time.AfterFunc(time.Hour, w.flushTimer)
	w.timer.Stop()
	return w
}

// Path is the history file written.
func (w *HistoryWriter) Path() string { return w.path }

// Write buffers r. Non-finite values (JSON has none) are written as 0,
// that is, omitted where the field is optional.
func (w *HistoryWriter) Write(r Record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed || w.closed {
		return
	}
	w.rec = r
	w.rec.Loss, w.rec.LR, w.rec.GradNorm = finite(r.Loss), finite(r.LR), finite(r.GradNorm)
	w.rec.SamplesPerS, w.rec.TokensPerS = finite(r.SamplesPerS), finite(r.TokensPerS)
	w.rec.ValLoss, w.rec.ValAccuracy = finite(r.ValLoss), finite(r.ValAccuracy)
	was := w.buf.Len()
	if err := w.enc.Encode(&w.rec); err != nil {
		w.fail(err)
		return
	}
	switch {
	case w.buf.Len() >= flushBytes:
		w.flushLocked()
	case was == 0:
		w.timer.Reset(flushEvery)
	}
}

// finite is v, or 0 for NaN and ±Inf.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// Close writes the buffered lines and closes the file; later Writes are
// dropped. It returns nil after a failure already logged.
func (w *HistoryWriter) Close() error {
	w.timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	if err != nil && !w.failed {
		w.fail(err)
	}
	return nil
}

func (w *HistoryWriter) flushTimer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
}

// flushLocked writes the buffered lines. The caller holds w.mu.
func (w *HistoryWriter) flushLocked() {
	if w.buf.Len() == 0 || w.failed || w.closed {
		w.buf.Reset()
		return
	}
	defer w.buf.Reset()
	if w.f == nil {
		f, err := openAppend(w.path)
		if err != nil {
			w.fail(err)
			return
		}
		w.f = f
	}
	if _, err := w.f.Write(w.buf.Bytes()); err != nil {
		w.fail(err)
	}
}

// fail logs err, once, and makes the writer drop what follows. The caller
// holds w.mu.
func (w *HistoryWriter) fail(err error) {
	w.failed = true
	w.buf.Reset()
	w.log.Warn("metrics history not written; training goes on without it", zap.String("path", w.path), zap.Error(err))
}

// openAppend opens path for appending, creating it and its directory. A
// file left by a crash mid-line is first ended with a newline, so the next
// record starts a line of its own (ReadHistory skips the torn one).
func openAppend(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err != nil && err != io.EOF {
			f.Close()
			return nil, err
		}
		if last[0] != '\n' {
			if _, err := f.Write([]byte{'\n'}); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	return f, nil
}
