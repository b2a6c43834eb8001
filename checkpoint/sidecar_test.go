package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Sidecar files are written beside the tensors, come back from Load, and a
// changed, truncated or missing one makes the checkpoint corrupt; bad
// names and duplicates are refused before anything is written.
func TestSidecars(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := NewLocalStorage(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(st, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	state := func(step int, sc ...Sidecar) *State {
		return &State{Job: "j", Step: step, Scaler: ScalerState{Scale: 1}, Sidecars: sc,
			Params: []Tensor{{Name: "w", Shape: []int{2}, Data: []float32{1, 2}}}}
	}
	cfg := Sidecar{Name: "config.json", Data: []byte(`{"model_type":"gpt2"}`)}
	save := func(s *State) error {
		if err := w.Save(ctx, s); err != nil {
			return err
		}
		return w.Flush(ctx)
	}
	if err := save(state(1, cfg)); err != nil {
		t.Fatal(err)
	}
	got, err := Load(ctx, st, "j/step-00000001")
	if err != nil || len(got.Sidecars) != 1 || got.Sidecars[0].Name != cfg.Name || string(got.Sidecars[0].Data) != string(cfg.Data) {
		t.Fatalf("load: %v %+v", err, got)
	}
	path := filepath.Join(dir, "j", "step-00000001", "config.json")
	for _, damage := range []func() error{
		func() error { return os.WriteFile(path, []byte(`{"model_type":"gpt3"}`), 0o644) }, // same size, other bytes
		func() error { return os.WriteFile(path, []byte(`{}`), 0o644) },
		func() error { return os.Remove(path) },
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(ctx, st, "j/step-00000001"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "config.json") {
			t.Fatalf("damaged sidecar: %v", err)
		}
	}
	for _, sc := range [][]Sidecar{{cfg, cfg}, {{Name: ModelFile}}, {{Name: "../x"}}, {{Name: ".hidden"}}} {
		if err := save(state(2, sc...)); !errors.Is(err, ErrInvalidState) {
			t.Errorf("sidecars %v: %v", sc, err)
		}
	}
	// A checkpoint without sidecars (as written before they existed) loads.
	if err := save(state(3)); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(ctx, st, "j/step-00000003"); err != nil || got.Sidecars != nil {
		t.Fatalf("no sidecars: %v %+v", err, got)
	}
}
