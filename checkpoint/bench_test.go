package checkpoint

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// syncMeter times one call precisely and counts its heap allocations, apart
// from the benchmark timer (whose Stop/Start read memory statistics with the
// world stopped, adding tens of microseconds to every iteration).
type syncMeter struct {
	ns, mallocs uint64
	n           int
	ms          runtime.MemStats
}

func (m *syncMeter) measure(fn func()) {
	runtime.ReadMemStats(&m.ms)
	before := m.ms.Mallocs
	start := time.Now()
	fn()
	m.ns += uint64(time.Since(start))
	runtime.ReadMemStats(&m.ms)
	m.mallocs += m.ms.Mallocs - before
	m.n++
}

// touch writes every value of s, as the optimizer step that precedes a Save
// in the training loop does, so that the state is as warm in the caches as
// it is there (the benchmark's own background write evicts it otherwise).
func touch(s *State) {
	for _, ts := range [][]Tensor{s.Params, s.Optim} {
		for _, t := range ts {
			for j := range t.Data {
				t.Data[j] += 1e-3
			}
		}
	}
}

func (m *syncMeter) report(b *testing.B) {
	if m.n > 0 {
		b.ReportMetric(float64(m.ns)/float64(m.n)/1e3, "sync-µs/op")
		b.ReportMetric(float64(m.mallocs)/float64(m.n), "sync-allocs/op")
	}
}

// stateBytes is the tensor payload of s in bytes.
func stateBytes(s *State) int64 {
	return 4 * int64(numParams(s.Params)+numParams(s.Optim))
}

// BenchmarkSave measures what blocks the training loop: Save of the
// 784-512-256-10 MLP (535,818 parameters) plus AdamW m and v, i.e. capture
// and copy of 6.4 MB. The background write is held until the timer is
// stopped, so neither its time nor its allocations are counted.
// sync-µs/op and sync-allocs/op are the figures to read (ns/op also holds
// timer overhead); MB/s is the copy rate.
func BenchmarkSave(b *testing.B) {
	s := mlpState()
	if n := numParams(s.Params); n != 535818 {
		b.Fatalf("MLP has %d parameters, want 535818", n)
	}
	w, err := NewWriter(NewMemStorage(), WriterConfig{Keep: 1, WriteTimeout: DefaultConfig().WriteTimeout})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	gate := make(chan struct{})
	w.beforeWrite = func() { <-gate }
	ctx := context.Background()
	// One save to lay out the buffers: steady state starts after it.
	if err := w.Save(ctx, s); err != nil {
		b.Fatal(err)
	}
	gate <- struct{}{}
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(stateBytes(s))
	b.ReportAllocs()
	b.ResetTimer()
	var m syncMeter
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		touch(s)
		b.StartTimer()
		s.Step++
		var err error
		m.measure(func() { err = w.Save(ctx, s) })
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		gate <- struct{}{}
		if err := w.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	m.report(b)
}

// BenchmarkBegin measures the synchronous part of Begin (the copy runs in the
// writer goroutine, overlapping the next forward and backward pass).
func BenchmarkBegin(b *testing.B) {
	s := mlpState()
	w, err := NewWriter(NewMemStorage(), WriterConfig{Keep: 1, WriteTimeout: DefaultConfig().WriteTimeout})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	gate := make(chan struct{})
	w.beforeWrite = func() { <-gate }
	ctx := context.Background()
	if err := w.Save(ctx, s); err != nil {
		b.Fatal(err)
	}
	gate <- struct{}{}
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var m syncMeter
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		touch(s)
		b.StartTimer()
		s.Step++
		var err error
		m.measure(func() { err = w.Begin(ctx, s) })
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := w.WaitCaptured(ctx); err != nil {
			b.Fatal(err)
		}
		gate <- struct{}{}
		if err := w.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	m.report(b)
}

// BenchmarkWrite measures a whole checkpoint of the MLP + AdamW state: Save
// and the background write (sha256, files, fsyncs, publish, retention) until
// Flush returns. MB/s is the background write throughput over tensor bytes.
func BenchmarkWrite(b *testing.B) {
	for _, tc := range []struct {
		name string
		st   func(b *testing.B) Storage
	}{
		{"local", func(b *testing.B) Storage {
			st, err := NewLocalStorage(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return st
		}},
		{"mem", func(b *testing.B) Storage { return NewMemStorage() }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := mlpState()
			w, err := NewWriter(tc.st(b), WriterConfig{Keep: 2, WriteTimeout: DefaultConfig().WriteTimeout})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			ctx := context.Background()
			b.SetBytes(stateBytes(s))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.Step++
				if err := w.Save(ctx, s); err != nil {
					b.Fatal(err)
				}
				if err := w.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLoad measures Load (read, verify sha256 of every tensor, decode)
// of the MLP + AdamW checkpoint from local disk (page cache warm).
func BenchmarkLoad(b *testing.B) {
	st, err := NewLocalStorage(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s := mlpState()
	w, err := NewWriter(st, DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Save(ctx, s); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(stateBytes(s))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Load(ctx, st, StepDir(s.Job, s.Step)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBeginOverlap is the training loop's view of Begin: Begin, ~2 ms of
// compute that only reads the parameters (a stand-in for forward and
// backward), then WaitCaptured before the optimizer step. blocked-µs/op is
// the time spent in Begin and WaitCaptured together (begin-µs/op and
// wait-µs/op apart): what the checkpoint costs the loop when the copy
// overlaps the compute. On an idle second core wait-µs/op is near 0; on a
// busy machine the copy competes for a core and the remainder shows here.
func BenchmarkBeginOverlap(b *testing.B) {
	s := mlpState()
	w, err := NewWriter(NewMemStorage(), WriterConfig{Keep: 1, WriteTimeout: DefaultConfig().WriteTimeout})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	gate := make(chan struct{})
	w.beforeWrite = func() { <-gate }
	ctx := context.Background()
	if err := w.Save(ctx, s); err != nil {
		b.Fatal(err)
	}
	gate <- struct{}{}
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	work := make([]float32, 64<<10)
	var inBegin, inWait time.Duration
	var sink float32
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		touch(s)
		b.StartTimer()
		s.Step++
		t0 := time.Now()
		if err := w.Begin(ctx, s); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		for time.Since(t1) < 2*time.Millisecond {
			for j := range work {
				sink += work[j] * s.Params[0].Data[j]
			}
		}
		t2 := time.Now()
		if err := w.WaitCaptured(ctx); err != nil {
			b.Fatal(err)
		}
		inBegin += t1.Sub(t0)
		inWait += time.Since(t2)
		b.StopTimer()
		gate <- struct{}{}
		if err := w.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64((inBegin+inWait).Microseconds())/float64(b.N), "blocked-µs/op")
	b.ReportMetric(float64(inBegin.Microseconds())/float64(b.N), "begin-µs/op")
	b.ReportMetric(float64(inWait.Microseconds())/float64(b.N), "wait-µs/op")
	if sink == 1 {
		b.Log(sink)
	}
}
