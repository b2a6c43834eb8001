package device_test

import (
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
)

func TestRegistryOpenAndSpecErrors(t *testing.T) {
	var r device.Registry
	if err := cpu.Register(&r); err != nil {
		t.Fatal(err)
	}
	if err := cpu.Register(&r); err == nil {
		t.Fatal("second registration accepted")
	}
	d, err := r.Open("cpu:threads=1")
	if err != nil || d.Threads() != 1 {
		t.Fatalf("open: %v", err)
	}
	for spec, want := range map[string]string{
		"gpu":               `unknown device "gpu"`,
		"cpu:threads":       "not key=value",
		"cpu:threads=x":     "not an integer",
		"cpu:slowdown=0.5":  "slowdown",
		"":                  "empty device spec",
		"cpu:threads=1,a=b": "unknown option",
	} {
		if _, err := r.Open(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want error containing %q", spec, err, want)
		}
	}
}

// slowdown=3 makes kernels take about three times as long.
func TestThrottledSlowsKernels(t *testing.T) {
	var r device.Registry
	_ = cpu.Register(&r)
	fast, _ := r.Open("cpu:threads=1")
	slow, err := r.Open("cpu:threads=1,slowdown=3")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(slow.Name(), "slowdown=3") {
		t.Fatalf("name %q", slow.Name())
	}
	const n = 192
	a := device.F32Matrix(make([]float32, n*n), n)
	c := make([]float32, n*n)
	timeIt := func(d device.Device) time.Duration {
		best := time.Hour
		for rep := 0; rep < 3; rep++ {
			start := time.Now()
			for i := 0; i < 20; i++ {
				d.Gemm(false, false, n, n, n, 1, a, a, 0, c, n)
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	f, s := timeIt(fast), timeIt(slow)
	if ratio := float64(s) / float64(f); ratio < 2 {
		t.Fatalf("slowdown=3 ran only %.2f× slower (%v vs %v)", ratio, s, f)
	}
}
