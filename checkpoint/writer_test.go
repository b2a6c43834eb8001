package checkpoint

import (
	"context"
	"errors"
	"io"
	"math"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWriterConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig invalid: %v", err)
	}
	for _, c := range []WriterConfig{{Keep: -1, WriteTimeout: time.Second}, {Keep: 1}} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrConfig", c, err)
		}
		if _, err := NewWriter(NewMemStorage(), c); !errors.Is(err, ErrConfig) {
			t.Errorf("NewWriter(%+v) = %v, want ErrConfig", c, err)
		}
	}
	if _, err := NewWriter(nil, DefaultConfig()); !errors.Is(err, ErrConfig) {
		t.Errorf("NewWriter(nil storage) = %v, want ErrConfig", err)
	}
}

func TestSaveRejectsInvalidState(t *testing.T) {
	w := newTestWriter(t, NewMemStorage(), 0, nil)
	cases := map[string]func(s *State){
		"empty job":      func(s *State) { s.Job = "" },
		"job with slash": func(s *State) { s.Job = "a/b" },
		"dot job":        func(s *State) { s.Job = ".tmp" },
		"negative step":  func(s *State) { s.Step = -1 },
		"nan scale":      func(s *State) { s.Scaler.Scale = float32(math.NaN()) },
		"short data":     func(s *State) { s.Params[0].Data = s.Params[0].Data[:3] },
		"negative dim":   func(s *State) { s.Optim[0].Shape = []int{-4, -8} },
		"duplicate name": func(s *State) { s.Optim[1].Name = s.Optim[0].Name },
		"reserved name":  func(s *State) { s.Params[1].Name = "__metadata__" },
		"empty name":     func(s *State) { s.Params[1].Name = "" },
	}
	for name, mutate := range cases {
		s := testState("j", 1)
		mutate(s)
		if err := w.Save(testCtx(t), s); !errors.Is(err, ErrInvalidState) {
			t.Errorf("%s: Save = %v, want ErrInvalidState", name, err)
		}
	}
	// The writer is still usable, and a layout change after a good save
	// (here: a shape change) is validated too.
	saveSync(t, w, testState("j", 2))
	s := testState("j", 3)
	s.Params[0].Shape = []int{8, 4}
	saveSync(t, w, s)
	s = testState("j", 4)
	s.Params[0].Data = s.Params[0].Data[:31]
	if err := w.Save(testCtx(t), s); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("Save with short data after a good save: %v", err)
	}
}

func TestRetention(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		w := newTestWriter(t, st, 2, nil)
		for step := 1; step <= 5; step++ {
			saveSync(t, w, testState("j", step))
		}
		names, _ := st.List(testCtx(t), "j")
		if !reflect.DeepEqual(names, []string{"step-00000004", "step-00000005"}) {
			t.Fatalf("after 5 saves with Keep=2: %v", names)
		}
		// A run resumed from an older step keeps what it just wrote even
		// though a (stale) newer checkpoint exists.
		saveSync(t, w, testState("j", 3))
		names, _ = st.List(testCtx(t), "j")
		if !reflect.DeepEqual(names, []string{"step-00000003", "step-00000005"}) {
			t.Fatalf("after re-saving step 3: %v", names)
		}
	})
}

// gateStorage blocks WriteFile until released and can fail it.
type gateStorage struct {
	Storage
	gate  chan struct{}
	fail  atomic.Bool
	calls atomic.Int32
}

func (g *gateStorage) WriteFile(ctx context.Context, name string, write func(io.Writer) error) error {
	g.calls.Add(1)
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	if g.fail.Load() {
		return errors.New("disk full")
	}
	return g.Storage.WriteFile(ctx, name, write)
}

// TestSaveWaitsForInFlightWrite: a second Save blocks until the first write
// completes (or its ctx ends); nothing is dropped.
func TestSaveWaitsForInFlightWrite(t *testing.T) {
	gs := &gateStorage{Storage: NewMemStorage(), gate: make(chan struct{})}
	w := newTestWriter(t, gs, 0, nil)
	if err := w.Save(testCtx(t), testState("j", 1)); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Save(short, testState("j", 2)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Save while a write is in flight: %v, want DeadlineExceeded", err)
	}
	if err := w.Flush(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush while a write is blocked: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Save(testCtx(t), testState("j", 3)) }()
	select {
	case err := <-done:
		t.Fatalf("Save returned %v while the previous write was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gs.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	list, err := List(testCtx(t), gs, "j")
	if err != nil || len(list) != 2 || list[0].Step != 1 || list[1].Step != 3 {
		t.Fatalf("List = %+v, %v; want steps 1 and 3", list, err)
	}
}

// TestWriteFailure: a failed background write publishes nothing, leaves no
// staging directory, is returned once by Flush, and does not stop later
// saves.
func TestWriteFailure(t *testing.T) {
	gs := &gateStorage{Storage: NewMemStorage(), gate: make(chan struct{})}
	close(gs.gate)
	var published atomic.Int32
	w := newTestWriter(t, gs, 0, func(Info) { published.Add(1) })
	gs.fail.Store(true)
	if err := w.Save(testCtx(t), testState("j", 1)); err != nil {
		t.Fatal(err)
	}
	err := w.Flush(testCtx(t))
	if !errors.Is(err, ErrWrite) || !strings.Contains(err.Error(), "j/step-00000001") || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Flush after a failed write: %v", err)
	}
	if err := w.Flush(testCtx(t)); err != nil {
		t.Fatalf("second Flush: %v, want nil (error reported once)", err)
	}
	if names, _ := gs.List(testCtx(t), "j"); len(names) != 0 {
		t.Fatalf("failed write left %v", names)
	}
	gs.fail.Store(false)
	saveSync(t, w, testState("j", 2))
	if published.Load() != 1 {
		t.Fatalf("OnPublished called %d times, want 1", published.Load())
	}
}

func TestCloseWaitsAndRejects(t *testing.T) {
	st := NewMemStorage()
	w, err := NewWriter(st, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Save(testCtx(t), testState("j", 1)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(testCtx(t), st, "j/step-00000001"); err != nil {
		t.Fatalf("Close did not wait for the pending write: %v", err)
	}
	if err := w.Save(testCtx(t), testState("j", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Save after Close: %v, want ErrClosed", err)
	}
	if err := w.Begin(testCtx(t), testState("j", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Begin after Close: %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Flush(testCtx(t)); err != nil {
		t.Fatalf("Flush after Close: %v", err)
	}
}

// TestSaveSteadyStateAllocs: the synchronous part of Save (capture and
// copy) allocates nothing once the layout is known.
func TestSaveSteadyStateAllocs(t *testing.T) {
	var snap snapshot
	snap.init()
	s := testState("j", 1)
	if err := snap.capture(s); err != nil {
		t.Fatal(err)
	}
	snap.copyData()
	allocs := testing.AllocsPerRun(100, func() {
		s.Step++
		if err := snap.capture(s); err != nil {
			t.Fatal(err)
		}
		snap.copyData()
	})
	if allocs != 0 {
		t.Fatalf("capture+copy allocates %.1f times per save, want 0", allocs)
	}
}

// TestConcurrentFlush drives the training-loop side (Save and Begin in turn)
// while other goroutines Flush, and checks under -race that every checkpoint
// is published intact and in order.
func TestConcurrentFlush(t *testing.T) {
	st := NewMemStorage()
	var last atomic.Int64
	var outOfOrder atomic.Bool
	w := newTestWriter(t, st, 3, func(i Info) {
		if int64(i.Step) <= last.Swap(int64(i.Step)) {
			outOfOrder.Store(true)
		}
	})
	ctx := testCtx(t)
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := w.Flush(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	s := testState("j", 0)
	for step := 1; step <= 40; step++ {
		s.Step = step
		s.Params[0].Data[0] = float32(step)
		var err error
		if step%2 == 0 {
			err = w.Save(ctx, s)
		} else if err = w.Begin(ctx, s); err == nil {
			err = w.WaitCaptured(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-flushed
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if outOfOrder.Load() || last.Load() != 40 {
		t.Fatalf("published out of order or incomplete: last step %d", last.Load())
	}
	list, err := List(ctx, st, "j")
	if err != nil || len(list) != 3 || list[2].Step != 40 {
		t.Fatalf("List = %+v, %v; want steps 38..40", list, err)
	}
	for _, info := range list {
		got, err := Load(ctx, st, info.Path)
		if err != nil {
			t.Fatal(err)
		}
		if got.Params[0].Data[0] != float32(info.Step) {
			t.Fatalf("%s holds the value of step %v", info.Path, got.Params[0].Data[0])
		}
	}
}
