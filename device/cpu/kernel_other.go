//go:build !amd64 || purego

package cpu

// platformKernels: only the portable kernel outside amd64 (or with purego).
func platformKernels() []*kernel { return nil }

func simdBiasReLU(row, bias, pre []float32) int { return 0 }
