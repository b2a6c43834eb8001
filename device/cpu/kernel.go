package cpu

import (
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// f32Kernel computes C[0:mr, 0:nr] = alpha·(Ap·Bp) + beta·C over kc steps of
// a packed A panel (kc×mr floats, step-major) and a packed B panel (kc×nr
// floats). ldc is C's row stride in elements. beta == 0 (either sign) must
// overwrite C without reading it. The caller guarantees every pointer covers
// its whole panel or tile.
type f32Kernel func(kc int, a, b, c *float32, ldc int, alpha, beta float32)

// bf16Kernel is f32Kernel over bf16 pairs: kc counts k pairs, the A panel
// holds kc×mr pairs and the B panel kc×nr pairs (two uint16 per pair, the
// lower k first). Accumulation is float32.
type bf16Kernel func(kc int, a, b *uint16, c *float32, ldc int, alpha, beta float32)

// kernel is one GEMM micro-kernel family and its cache blocking.
type kernel struct {
	name string
	// mr×nr is the register tile; kc the depth of one packed slice (even);
	// mc the largest row block whose packed A slice stays in L2.
	mr, nr, kc, mc int
	f32            f32Kernel
	// bf16 is nil when the CPU has no native bf16 dot product: BF16 operands
	// are then widened to float32 while packing (exact) and run through f32.
	bf16 bf16Kernel
	// transpose8, if set, packs a transposed f32 B eight columns at a time
	// (see transpose8AVX); nil uses the portable gather.
	transpose8 func(dst *float32, stride int, src *float32, ld int, blocks int)
	// prefetch, if set, hints lines 64-byte lines at p into L2; the driver
	// uses it to fetch the next B micro-panel while the current one runs.
	prefetch func(p *float32, lines int)
	// vec, if set, runs the elementwise loops (GELU, exponentials, bf16
	// rounding) and LayerNorm's rows in SIMD; nil uses the portable loops.
	vec *vecKernels
}

// displayName is k.name (what LOOM_CPU_KERNEL and kernel= take) plus
// "+bf16" when BF16 GEMMs use native dot products: Device.Name reports
// "cpu/avx512+bf16" for a kernel selected as "avx512".
func (k *kernel) displayName() string {
	if k.bf16 != nil {
		return k.name + "+bf16"
	}
	return k.name
}

// genericKernel is the portable fallback every platform has.
var genericKernel = &kernel{name: "generic", mr: 4, nr: 4, kc: 256, mc: 64, f32: sgemm4x4Generic}

// supportedKernels lists the kernels this CPU can run, fastest first; the
// last is always genericKernel. Detection runs once per process.
var supportedKernels = sync.OnceValue(func() []*kernel {
	return append(platformKernels(), genericKernel)
})

// KernelNames lists the GEMM kernels this CPU supports, fastest first
// (e.g. [avx512 avx2 generic]); any of them may be forced with
// Config.Kernel.
func KernelNames() []string {
	var names []string
	for _, k := range supportedKernels() {
		names = append(names, k.name)
	}
	return names
}

// pickKernel returns the kernel called name ("" or "auto": the fastest that
// passes its self-check).
func pickKernel(name string) (*kernel, error) {
	ks := supportedKernels()
	if name == "" || name == "auto" {
		for _, k := range ks {
			if selfCheck(k) == nil {
				return k, nil
			}
		}
		return genericKernel, nil
	}
	for _, k := range ks {
		if k.name == name {
			if err := selfCheck(k); err != nil {
				return nil, err
			}
			return k, nil
		}
	}
	for _, known := range []string{"avx512", "avx2", "generic"} {
		if name == known {
			return nil, fmt.Errorf("cpu device: kernel %q is not supported by this CPU (have %s)", name, strings.Join(KernelNames(), ", "))
		}
	}
	return nil, fmt.Errorf("cpu device: unknown kernel %q (want auto, avx512, avx2 or generic)", name)
}

var selfChecks sync.Map // *kernel → error

// selfCheck runs a small known-answer GEMM through k once per process and
// compares it with the portable kernel: a kernel whose instructions this
// build could not be tested on must not silently corrupt training.
func selfCheck(k *kernel) error {
	if k == genericKernel {
		return nil
	}
	if v, ok := selfChecks.Load(k); ok {
		err, _ := v.(error)
		return err
	}
	err := runSelfCheck(k)
	selfChecks.Store(k, err)
	return err
}

// sgemm4x4Generic is the portable register tile (see f32Kernel).
func sgemm4x4Generic(kc int, ap, bp, cp *float32, ldc int, alpha, beta float32) {
	a := unsafe.Slice(ap, kc*4)
	b := unsafe.Slice(bp, kc*4)
	c := unsafe.Slice(cp, 3*ldc+4)
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	for len(a) >= 4 && len(b) >= 4 {
		a0, a1, a2, a3 := a[0], a[1], a[2], a[3]
		b0, b1, b2, b3 := b[0], b[1], b[2], b[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
		a, b = a[4:], b[4:]
	}
	tile := [16]float32{c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33}
	storeTile(c, ldc, tile[:], 4, 4, 4, alpha, beta)
}

// storeTile writes C[0:rows, 0:cols] = alpha·t + beta·C from a tile with row
// stride tn; beta == 0 does not read C.
func storeTile(c []float32, ldc int, t []float32, tn, rows, cols int, alpha, beta float32) {
	for r := 0; r < rows; r++ {
		crow := c[r*ldc : r*ldc+cols]
		trow := t[r*tn : r*tn+cols]
		if beta == 0 {
			for s, v := range trow {
				crow[s] = alpha * v
			}
			continue
		}
		for s, v := range trow {
			crow[s] = alpha*v + beta*crow[s]
		}
	}
}
