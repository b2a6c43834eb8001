package checkpoint

import (
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

// TestRoundTrip saves a State and loads it back: tensors bitwise equal
// (NaN payloads, -0, Inf, subnormals included) and every metadata field.
func TestRoundTrip(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		var mu sync.Mutex
		var published []Info
		w := newTestWriter(t, st, 0, func(i Info) {
			mu.Lock()
			published = append(published, i)
			mu.Unlock()
		})
		before := time.Now()
		want := testState("job1", 50)
		saveSync(t, w, want)

		got, err := Load(testCtx(t), st, "job1/step-00000050")
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, want, got)

		mu.Lock()
		defer mu.Unlock()
		if len(published) != 1 {
			t.Fatalf("OnPublished called %d times, want 1", len(published))
		}
		info := published[0]
		if info.Path != "job1/step-00000050" || info.Job != "job1" || info.Step != 50 || info.Epoch != 2 ||
			info.WorldSize != 3 || info.Precision != "bf16" || info.ConfigHash != "sha256:abc123" ||
			len(info.ManifestSHA256) != 64 || info.Bytes <= 0 || info.Problem != "" {
			t.Fatalf("published info %+v", info)
		}
		if info.Created.Before(before.Add(-time.Second)) || info.Created.After(time.Now().Add(time.Second)) {
			t.Fatalf("Created %v outside the save window", info.Created)
		}

		// Latest and List agree with what was published.
		s2, info2, err := Latest(testCtx(t), st, "job1", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, want, s2)
		if !reflect.DeepEqual(stripMono(info2), stripMono(info)) {
			t.Fatalf("Latest info %+v, published %+v", info2, info)
		}
		list, err := List(testCtx(t), st, "job1")
		if err != nil || len(list) != 1 || !reflect.DeepEqual(stripMono(list[0]), stripMono(info)) {
			t.Fatalf("List = %+v, %v; want [%+v]", list, err, info)
		}
	})
}

func stripMono(i Info) Info { i.Created = i.Created.Round(0).UTC(); return i }

// TestSaveCopiesState: once Save returns, the caller may overwrite its state;
// the checkpoint holds the values at Save time.
func TestSaveCopiesState(t *testing.T) {
	st := NewMemStorage()
	w := newTestWriter(t, st, 0, nil)
	blocked := make(chan struct{})
	w.beforeWrite = func() { <-blocked } // hold the write until the state is scribbled over
	s := testState("j", 1)
	want := testState("j", 1)
	if err := w.Save(testCtx(t), s); err != nil {
		t.Fatal(err)
	}
	for _, ts := range [][]Tensor{s.Params, s.Optim} {
		for _, x := range ts {
			for i := range x.Data {
				x.Data[i] = 7
			}
		}
	}
	s.RNG["data"] = 0
	s.Epoch = 99
	close(blocked)
	if err := w.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	got, err := Load(testCtx(t), st, StepDir("j", 1))
	if err != nil {
		t.Fatal(err)
	}
	requireEqualState(t, want, got)
}

// TestBeginWaitCaptured: with Begin the copy happens off the caller's
// goroutine; after WaitCaptured the caller may overwrite its state.
func TestBeginWaitCaptured(t *testing.T) {
	st := NewMemStorage()
	w := newTestWriter(t, st, 0, nil)
	for step := 1; step <= 3; step++ {
		s := testState("j", step)
		want := testState("j", step)
		if err := w.Begin(testCtx(t), s); err != nil {
			t.Fatal(err)
		}
		if err := w.WaitCaptured(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if err := w.WaitCaptured(testCtx(t)); err != nil { // idempotent
			t.Fatal(err)
		}
		for _, x := range s.Params {
			for i := range x.Data {
				x.Data[i] = -1
			}
		}
		if err := w.Flush(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		got, err := Load(testCtx(t), st, StepDir("j", step))
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, want, got)
	}
}

// TestLatestAllowed: only recorded checkpoints are used for resume.
func TestLatestAllowed(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		w := newTestWriter(t, st, 0, nil)
		for _, step := range []int{10, 20, 30} {
			saveSync(t, w, testState("j", step))
		}
		s, info, err := Latest(testCtx(t), st, "j", AllowPaths("j/step-00000010", "j/step-00000020"), nil)
		if err != nil || s.Step != 20 || info.Path != "j/step-00000020" {
			t.Fatalf("Latest(allowed 10, 20) = step %v %+v, %v; want 20", s, info, err)
		}
		_, _, err = Latest(testCtx(t), st, "j", AllowPaths(), nil)
		if !errors.Is(err, ErrNoCheckpoint) {
			t.Fatalf("Latest(nothing recorded): %v, want ErrNoCheckpoint", err)
		}
		_, _, err = Latest(testCtx(t), st, "other", nil, nil)
		if !errors.Is(err, ErrNoCheckpoint) {
			t.Fatalf("Latest(unknown job): %v, want ErrNoCheckpoint", err)
		}
	})
}

// TestResaveSameStep: saving a step that already exists (a run resumed from
// an older checkpoint) replaces it.
func TestResaveSameStep(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		w := newTestWriter(t, st, 0, nil)
		first := testState("j", 5)
		saveSync(t, w, first)
		second := testState("j", 5)
		second.Params[0].Data[10] = 1234
		second.Epoch = 3
		saveSync(t, w, second)
		got, err := Load(testCtx(t), st, StepDir("j", 5))
		if err != nil {
			t.Fatal(err)
		}
		requireEqualState(t, second, got)
		if names, _ := st.List(testCtx(t), "j"); !reflect.DeepEqual(names, []string{"step-00000005"}) {
			t.Fatalf("job directory holds %v", names)
		}
	})
}
