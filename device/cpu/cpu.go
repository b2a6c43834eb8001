// Package cpu is the CPU backend of loom: a blocked, packed GEMM with
// register-tiled micro-kernels (AVX-512 with native BF16 dot products,
// AVX2+FMA, or portable Go, chosen at run time) split across goroutines, and
// fused elementwise kernels, for F32 and for BF16/F16 inputs with F32
// accumulation. No cgo: the kernels are Go assembly.
package cpu

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/loomtrain/loom/device"
)

// Config selects how the CPU device computes.
type Config struct {
	// Threads is the number of goroutines a kernel splits its work across;
	// 0 means runtime.NumCPU().
	Threads int
	// Kernel forces a GEMM kernel: "avx512", "avx2" or "generic"; "" or
	// "auto" picks the fastest this CPU supports (see KernelNames). When
	// empty, the environment variable LOOM_CPU_KERNEL is consulted, so a
	// deployment can force a lower path without a config change.
	Kernel string
}

// KernelEnv is the environment variable consulted when Config.Kernel is "".
const KernelEnv = "LOOM_CPU_KERNEL"

// DefaultConfig uses every core.
func DefaultConfig() Config { return Config{Threads: 0} }

// Validate rejects impossible settings.
func (c Config) Validate() error {
	if c.Threads < 0 || c.Threads > 4096 {
		return fmt.Errorf("cpu device: threads=%d out of range [0, 4096]", c.Threads)
	}
	return nil
}

// Device computes on the host CPU. Each call fans out to Threads goroutines
// internally. It is meant for one goroutine at a time; concurrent Gemm calls
// are serialised (they share the packing buffers), not unsafe.
type Device struct {
	threads int
	kern    *kernel
	bBudget int // packed op(B) elements per column block (packedBBudget)

	mu  sync.Mutex // guards the buffers below
	bpF []float32  // packed op(B), shared by the threads of one call
	bpH []uint16
	ws  []workspace // one per thread

	ceLoss []float64 // SoftmaxCrossEntropy per-row results
	ceHit  []bool
	attn   []attnScratch // per-thread attention workspace (attention.go)

	// Device API v2 (device.Backend, buffer.go): bytes held by live
	// buffers, the most they may hold (0: unknown), and op scratch.
	memUsed, memLimit int64
	scratch           v2Scratch
}

// workspace is one thread's reusable scratch: its packed slice of op(A) and
// an mr×nr tile for edge blocks of C.
type workspace struct {
	apF  []float32
	apH  []uint16
	tile []float32
}

var _ device.Device = (*Device)(nil)

// New opens a CPU device.
func New(cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Kernel
	if name == "" {
		name = os.Getenv(KernelEnv)
	}
	k, err := pickKernel(name)
	if err != nil {
		return nil, err
	}
	t := cfg.Threads
	if t == 0 {
		t = runtime.NumCPU()
	}
	return newDevice(k, t), nil
}

func newDevice(k *kernel, threads int) *Device {
	d := &Device{threads: threads, kern: k, bBudget: packedBBudget, ws: make([]workspace, threads), memLimit: hostMemoryLimit()}
	for i := range d.ws {
		d.ws[i].tile = make([]float32, k.mr*k.nr)
	}
	return d
}

// Register adds the "cpu" backend to r. Options: threads=N,
// kernel=auto|avx512|avx2|generic.
func Register(r *device.Registry) error {
	return r.Register("cpu", func(o device.Options) (device.Device, error) {
		cfg := DefaultConfig()
		var err error
		if cfg.Threads, err = o.Int("threads", 0); err != nil {
			return nil, err
		}
		cfg.Kernel = o["kernel"]
		for k := range o {
			if k != "threads" && k != "kernel" {
				return nil, fmt.Errorf("cpu device: unknown option %q (have threads, kernel)", k)
			}
		}
		return New(cfg)
	})
}

// Name reports the backend and its GEMM kernel.
func (d *Device) Name() string { return "cpu/" + d.kern.displayName() }

// Kernel is the GEMM kernel in use ("avx512", "avx2" or "generic").
func (d *Device) Kernel() string { return d.kern.name }

// Threads is the number of goroutines kernels use.
func (d *Device) Threads() int { return d.threads }

// parallel runs body(worker, task) for every task in [0, tasks) on up to
// threads goroutines (the caller's included); worker < threads identifies
// the goroutine, so body may use per-worker scratch. Tasks are handed out in
// order through an atomic counter, which balances uneven progress on a
// shared machine. It returns when all tasks are done.
func (d *Device) parallel(threads, tasks int, body func(worker, task int)) {
	threads = min(threads, tasks)
	if threads <= 1 {
		for t := 0; t < tasks; t++ {
			body(0, t)
		}
		return
	}
	var next atomic.Int64
	run := func(w int) {
		for {
			t := int(next.Add(1) - 1)
			if t >= tasks {
				return
			}
			body(w, t)
		}
	}
	var wg sync.WaitGroup
	wg.Add(threads - 1)
	for w := 1; w < threads; w++ {
		go func() {
			defer wg.Done()
			run(w)
		}()
	}
	run(0)
	wg.Wait()
}

// parallelFor runs body over [0, n) split into at most d.threads contiguous
// ranges, each at least minChunk long, and waits for all of them.
func (d *Device) parallelFor(n, minChunk int, body func(lo, hi int)) {
	minChunk = max(minChunk, 1)
	workers := min(d.threads, ceilDiv(n, minChunk))
	if workers <= 1 {
		if n > 0 {
			body(0, n)
		}
		return
	}
	per := ceilDiv(n, workers)
	d.parallel(workers, ceilDiv(n, per), func(_, t int) {
		body(t*per, min(n, (t+1)*per))
	})
}
