package cpu

import (
	"fmt"
	"testing"

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
