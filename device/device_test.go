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

// sleepyDevice's Gemm takes a known time without using the CPU and adds the
// time it took to *spent, so the throttle's arithmetic can be checked on a
// loaded machine.
type sleepyDevice struct {
	device.Device
	spent *time.Duration
}

func (d sleepyDevice) Gemm(bool, bool, int, int, int, float32, device.Matrix, device.Matrix, float32, []float32, int) {
	s := time.Now()
	time.Sleep(2 * time.Millisecond)
	*d.spent += time.Since(s)
}

// slowdown=3 makes kernels take (at least) three times as long: the
// throttle sleeps twice each call's own time. Its sleeps add up to twice
// the kernels' time less the debt it has not paid yet (under a
// millisecond), so the throttled calls take at least three times the
// kernels' own time, less that millisecond, however late the timers fire.
func TestThrottledSlowsKernels(t *testing.T) {
	var r device.Registry
	_ = cpu.Register(&r)
	base, _ := r.Open("cpu:threads=1")
	var inner time.Duration
	slow := &device.Throttled{Device: sleepyDevice{base, &inner}, Factor: 3}
	if !strings.Contains(slow.Name(), "slowdown=3") {
		t.Fatalf("name %q", slow.Name())
	}
	const calls = 20
	start := time.Now()
	for i := 0; i < calls; i++ {
		slow.Gemm(false, false, 1, 1, 1, 1, device.Matrix{}, device.Matrix{}, 0, nil, 1)
	}
	throttled := time.Since(start)
	if throttled < 3*inner-time.Millisecond {
		t.Fatalf("slowdown=3 took %v for kernels that took %v", throttled, inner)
	}
	if d, err := r.Open("cpu:threads=1,slowdown=2"); err != nil || !strings.Contains(d.Name(), "slowdown=2") {
		t.Fatalf("registry did not wrap the device: %v", err)
	}
}
