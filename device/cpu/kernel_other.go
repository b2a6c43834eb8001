//go:build !amd64 || purego

package cpu

// platformKernels: only the portable kernel outside amd64 (or with purego).
func platformKernels() []*kernel { return nil }

func simdAdd(dst, src []float32) int { return 0 }

func simdBiasReLU(row, bias, pre []float32) int { return 0 }
