package cpu

import (
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// A slowed CPU device (slowdown=F, what tests and benchmarks use to model a
// slower machine) keeps the device API v2 and host memory, so it can train
// a GPT, and computes what the plain device computes.
func TestSlowdownKeepsBackend(t *testing.T) {
	var r device.Registry
	if err := Register(&r); err != nil {
		t.Fatal(err)
	}
	d, err := r.Open("cpu:threads=1,slowdown=2")
	if err != nil {
		t.Fatal(err)
	}
	be, ok := d.(device.Backend)
	if !ok {
		t.Fatalf("%s does not implement device.Backend", d.Name())
	}
	host, ok := d.(device.HostMemory)
	if !ok {
		t.Fatalf("%s does not implement device.HostMemory", d.Name())
	}
	buf, err := be.Alloc(tensor.F32, 4)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := be.Alloc(tensor.F32, 1)
	if err != nil {
		t.Fatal(err)
	}
	be.Upload(device.Whole(buf), []float32{1, 2, 3, 4})
	be.Scale(device.Whole(buf), 2)
	be.Sum(device.Whole(sum), device.Whole(buf))
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := host.HostF32(device.Whole(sum))[0]; got != 20 {
		t.Fatalf("sum through the slowed backend = %v, want 20", got)
	}
	if used, _ := be.Memory(); used != 5*4 {
		t.Fatalf("memory used %d, want 20 bytes", used)
	}
}
