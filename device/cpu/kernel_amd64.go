//go:build amd64 && !purego

package cpu

import "golang.org/x/sys/cpu"

// Assembly micro-kernels (kernel_amd64.s); see f32Kernel and bf16Kernel.

//go:noescape
func sgemm6x16AVX2(kc int, a, b, c *float32, ldc int, alpha, beta float32)

//go:noescape
func sgemm6x32AVX512(kc int, a, b, c *float32, ldc int, alpha, beta float32)

// bgemm6x32AVX512BF16 takes kc as the number of k pairs.
//
//go:noescape
func bgemm6x32AVX512BF16(kc int, a, b *uint16, c *float32, ldc int, alpha, beta float32)

// transpose8AVX writes column p of 8 rows of src (row stride ld, blocks×8
// columns) as 8 consecutive floats at dst[p·stride:]. The caller guarantees
// both extents.
//
//go:noescape
func transpose8AVX(dst *float32, stride int, src *float32, ld int, blocks int)

// prefetchT1 hints lines 64-byte lines from p into L2 (no fault on any
// address).
//
//go:noescape
func prefetchT1(p *float32, lines int)

// Blocking: kc×nr floats of packed B form the L1-resident micro-panel
// (24 KiB for AVX2 at kc=384, 32 KiB for AVX-512 at kc=256; Zen 5 has a
// 48 KiB L1D); mc×kc floats of packed A stay in L2 (≤ 216 KiB). kc=384 beat
// 256 by ~5% at 2048³ on the Zen 5 VM (1024³ within noise).
var (
	avx2Kernel   = &kernel{name: "avx2", mr: 6, nr: 16, kc: 384, mc: 144, f32: sgemm6x16AVX2, transpose8: transpose8AVX, prefetch: prefetchT1, vec: avx2Vec}
	avx512Kernel = &kernel{name: "avx512", mr: 6, nr: 32, kc: 256, mc: 144, f32: sgemm6x32AVX512, transpose8: transpose8AVX, prefetch: prefetchT1, vec: avx2Vec}
)

// platformKernels detects, via CPUID and the OS-enabled register state
// (XCR0, which x/sys/cpu checks), which kernels this CPU runs.
func platformKernels() []*kernel {
	var ks []*kernel
	if cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL {
		k := *avx512Kernel
		if cpu.X86.HasAVX512BF16 {
			k.bf16 = bgemm6x32AVX512BF16
		}
		ks = append(ks, &k)
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, avx2Kernel)
	}
	return ks
}

var hasAVX2 = cpu.X86.HasAVX2

// biasReLUAVX2 does, for i < n (a multiple of 16): p := row[i] + bias[i];
// pre[i] = p; row[i] = relu(p) (a set sign bit gives +0, as relu does).
//
//go:noescape
func biasReLUAVX2(row, bias, pre *float32, n int)

// simdBiasReLU runs biasReLUAVX2 over the longest multiple-of-16 prefix of
// row and returns its length.
func simdBiasReLU(row, bias, pre []float32) int {
	n := len(row) &^ 15
	if !hasAVX2 || n == 0 {
		return 0
	}
	_, _ = bias[n-1], pre[n-1]
	biasReLUAVX2(&row[0], &bias[0], &pre[0], n)
	return n
}
