package cpu

import (
	"fmt"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

func BenchmarkTune(b *testing.B) {
	k := supportedKernels()[0]
	okc, omc := k.kc, k.mc
	defer func() { k.kc, k.mc = okc, omc }()
	for _, kc := range []int{256, 384, 512} {
		for _, mc := range []int{72, 144, 288} {
			k.kc, k.mc = kc, mc
			b.Run(fmt.Sprintf("kc%d/mc%d", kc, mc), func(b *testing.B) { benchGemm(b, tensor.F32, 1, 2048) })
		}
	}
}

func BenchmarkShapeNT(b *testing.B) {
	d, _ := New(Config{Threads: 1})
	const m, n, k = 64, 512, 784
	a := make([]float32, m*k)
	w := make([]float32, n*k)
	c := make([]float32, m*n)
	am, wm := device.F32Matrix(a, k), device.F32Matrix(w, k)
	for i := 0; i < b.N; i++ {
		d.Gemm(false, true, m, n, k, 1, am, wm, 0, c, n)
	}
	b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
