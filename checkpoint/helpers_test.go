package checkpoint

import (
	"bytes"
	"context"
	"io"
	"math"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// forEachStorage runs fn as a subtest against every Storage implementation.
func forEachStorage(t *testing.T, fn func(t *testing.T, st Storage)) {
	t.Helper()
	t.Run("local", func(t *testing.T) {
		st, err := NewLocalStorage(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		fn(t, st)
	})
	t.Run("mem", func(t *testing.T) { fn(t, NewMemStorage()) })
}

// testState builds a small State whose tensors hold awkward values (NaN with
// a payload, -0, ±Inf, subnormals, the largest float) besides ordinary ones.
func testState(job string, step int) *State {
	odd := []float32{
		math.Float32frombits(0x7fc01234), float32(math.Copysign(0, -1)), float32(math.Inf(1)),
		float32(math.Inf(-1)), math.Float32frombits(1), math.MaxFloat32, -1.5,
	}
	mk := func(name string, shape ...int) Tensor {
		n := 1
		for _, d := range shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(step)*0.001 + float32(i)*0.25 - float32(len(name))
		}
		copy(data, odd)
		return Tensor{Name: name, Shape: shape, Data: data}
	}
	return &State{
		Job: job, ConfigHash: "sha256:abc123", Step: step, Epoch: 2,
		SamplerEpoch: 2, SamplerOffset: 12345, WorldSize: 3, Precision: "bf16",
		RNG:    map[string]uint64{"data": 42, "dropout": math.MaxUint64, "init": 1 << 63},
		Scaler: ScalerState{Scale: 65536.5, GoodSteps: 17, Skipped: 2},
		Params: []Tensor{mk("l0.w", 4, 8), mk("l0.b", 8), mk("scalar"), mk("empty", 0, 3)},
		Optim:  []Tensor{mk("l0.w.m", 4, 8), mk("l0.w.v", 4, 8), mk("l0.b.m", 8), mk("l0.b.v", 8), mk("step")},
	}
}

// mlpState is the 784-512-256-10 MLP of the MNIST examples (535,818
// parameters) with AdamW state (m and v per parameter).
func mlpState() *State {
	layers := []int{784, 512, 256, 10}
	s := &State{Job: "mnist", ConfigHash: "h", Precision: "fp32", WorldSize: 2,
		RNG: map[string]uint64{"data": 1, "init": 2}, Scaler: ScalerState{Scale: 1}}
	add := func(name string, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		mk := func(suffix string) Tensor {
			data := make([]float32, n)
			for i := range data {
				data[i] = float32(i%1000) * 1e-3
			}
			return Tensor{Name: name + suffix, Shape: shape, Data: data}
		}
		s.Params = append(s.Params, mk(""))
		s.Optim = append(s.Optim, mk(".m"), mk(".v"))
	}
	for i := 0; i+1 < len(layers); i++ {
		add("l"+string(rune('0'+i))+".w", layers[i], layers[i+1])
		add("l"+string(rune('0'+i))+".b", layers[i+1])
	}
	return s
}

func numParams(ts []Tensor) int {
	n := 0
	for _, t := range ts {
		n += len(t.Data)
	}
	return n
}

// requireEqualState fails unless got equals want bitwise, metadata included.
func requireEqualState(t *testing.T, want, got *State) {
	t.Helper()
	if want.Job != got.Job || want.ConfigHash != got.ConfigHash || want.Step != got.Step ||
		want.Epoch != got.Epoch || want.SamplerEpoch != got.SamplerEpoch || want.SamplerOffset != got.SamplerOffset ||
		want.WorldSize != got.WorldSize || want.Precision != got.Precision || want.Scaler != got.Scaler {
		t.Fatalf("metadata differs:\nwant %+v\n got %+v", *want, *got)
	}
	if len(want.RNG) != len(got.RNG) {
		t.Fatalf("RNG %v, want %v", got.RNG, want.RNG)
	}
	for k, v := range want.RNG {
		if got.RNG[k] != v {
			t.Fatalf("RNG[%q] = %d, want %d", k, got.RNG[k], v)
		}
	}
	requireEqualTensors(t, "Params", want.Params, got.Params)
	requireEqualTensors(t, "Optim", want.Optim, got.Optim)
}

func requireEqualTensors(t *testing.T, what string, want, got []Tensor) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.Name != g.Name || !equalInts(w.Shape, g.Shape) || len(w.Data) != len(g.Data) {
			t.Fatalf("%s[%d]: %q %v (%d values), want %q %v (%d values)", what, i, g.Name, g.Shape, len(g.Data), w.Name, w.Shape, len(w.Data))
		}
		for j := range w.Data {
			if math.Float32bits(w.Data[j]) != math.Float32bits(g.Data[j]) {
				t.Fatalf("%s %q[%d] = %#08x, want %#08x", what, w.Name, j, math.Float32bits(g.Data[j]), math.Float32bits(w.Data[j]))
			}
		}
	}
}

// newTestWriter returns a Writer that is closed at the end of the test.
func newTestWriter(t *testing.T, st Storage, keep int, onPublished func(Info)) *Writer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Keep = keep
	cfg.OnPublished = onPublished
	w, err := NewWriter(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// saveSync saves s and waits until it is published.
func saveSync(t *testing.T, w *Writer, s *State) {
	t.Helper()
	ctx := testCtx(t)
	if err := w.Save(ctx, s); err != nil {
		t.Fatalf("Save step %d: %v", s.Step, err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush after step %d: %v", s.Step, err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func readAll(t *testing.T, st Storage, name string) []byte {
	t.Helper()
	rc, _, err := st.Open(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAll(t *testing.T, st Storage, name string, b []byte) {
	t.Helper()
	if err := st.WriteFile(testCtx(t), name, func(w io.Writer) error {
		_, err := io.Copy(w, bytes.NewReader(b))
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// observed returns a logger that records warnings and above.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.WarnLevel)
	return zap.New(core), logs
}
