package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// runSelfCheck compares kernel k with the portable kernel on a small GEMM
// that has edge tiles in both dimensions, crosses a kc boundary and has an
// odd depth, for F32 and, when k has a native path, BF16. It takes well
// under a millisecond and runs once per process per kernel.
func runSelfCheck(k *kernel) error {
	m, n, depth := 2*k.mr+1, 2*k.nr+3, k.kc+7
	r := rand.New(rand.NewPCG(1, 2))
	fa := make([]float32, m*depth)
	fb := make([]float32, depth*n)
	for i := range fa {
		fa[i] = float32(r.NormFloat64())
	}
	for i := range fb {
		fb[i] = float32(r.NormFloat64())
	}
	ha := make([]uint16, len(fa))
	hb := make([]uint16, len(fb))
	tensor.EncodeHalf(tensor.BF16, ha, fa)
	tensor.EncodeHalf(tensor.BF16, hb, fb)
	cases := []struct {
		dt   tensor.DType
		a, b device.Matrix
	}{
		{tensor.F32, device.F32Matrix(fa, depth), device.F32Matrix(fb, n)},
		{tensor.BF16, device.HalfMatrix(tensor.BF16, ha, depth), device.HalfMatrix(tensor.BF16, hb, n)},
	}
	got := newDevice(k, 1)
	want := newDevice(genericKernel, 1)
	for _, tc := range cases {
		cg := make([]float32, m*n)
		cw := make([]float32, m*n)
		for i := range cg {
			cg[i] = float32(i%7) - 3
			cw[i] = cg[i]
		}
		got.Gemm(false, false, m, n, depth, 0.5, tc.a, tc.b, 0.25, cg, n)
		want.Gemm(false, false, m, n, depth, 0.5, tc.a, tc.b, 0.25, cw, n)
		for i := range cg {
			if d := math.Abs(float64(cg[i] - cw[i])); !(d <= 1e-3*(1+math.Abs(float64(cw[i])))) {
				return fmt.Errorf("cpu device: kernel %s failed its self-check (%v C[%d]=%g, portable kernel %g)", k.displayName(), tc.dt, i, cg[i], cw[i])
			}
		}
	}
	return nil
}
