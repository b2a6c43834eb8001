package cpu

import (
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/devicetest"
)

// TestConformance runs the device.Backend conformance suite on every GEMM
// kernel this CPU supports, with two threads so the parallel paths run.
func TestConformance(t *testing.T) {
	for _, k := range KernelNames() {
		t.Run(k, func(t *testing.T) {
			devicetest.Run(t, func(t *testing.T) device.Backend {
				d, err := New(Config{Threads: 2, Kernel: k})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
}
