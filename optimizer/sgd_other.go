//go:build !amd64 || purego

package optimizer

func simdSGDMomentum(val, grad, buf []float32, gs, wd, mu, lr float32) int { return 0 }
