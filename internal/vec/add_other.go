//go:build !amd64 || purego

package vec

func simdSum(dst, a, b []float32) int { return 0 }

func simdSum2(d1, d2, a, b []float32) int { return 0 }
func simdCopy2(d1, d2, src []float32) int { return 0 }
