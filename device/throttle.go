package device

import (
	"fmt"
	"strconv"
	"time"

	"github.com/loomtrain/loom/tensor"
)

// Throttled makes a device run Factor times slower than it is by sleeping
// (Factor−1) × the time each kernel took, so a test or benchmark can model a
// slower machine without burning CPU: the extra time is idle, not spin.
// Sleep debt is paid in slices of at least a millisecond to stay accurate
// despite timer granularity. It is opened with the generic device option
// slowdown=F (F >= 1), e.g. "cpu:threads=1,slowdown=2".
type Throttled struct {
	Device
	Factor float64
	debt   time.Duration
}

func (t *Throttled) pay(start time.Time) {
	t.debt += time.Duration(float64(time.Since(start)) * (t.Factor - 1))
	if t.debt >= time.Millisecond {
		s := time.Now()
		time.Sleep(t.debt)
		t.debt -= time.Since(s)
	}
}

// Name reports the wrapped device and the slowdown.
func (t *Throttled) Name() string { return fmt.Sprintf("%s(slowdown=%g)", t.Device.Name(), t.Factor) }

// Gemm implements Device.
func (t *Throttled) Gemm(transA, transB bool, m, n, k int, alpha float32, a, b Matrix, beta float32, c []float32, ldc int) {
	defer t.pay(time.Now())
	t.Device.Gemm(transA, transB, m, n, k, alpha, a, b, beta, c, ldc)
}

// BiasAct implements Device.
func (t *Throttled) BiasAct(act Activation, x, bias, pre []float32, rows, cols int) {
	defer t.pay(time.Now())
	t.Device.BiasAct(act, x, bias, pre, rows, cols)
}

// ActBackward implements Device.
func (t *Throttled) ActBackward(act Activation, grad, pre []float32) {
	defer t.pay(time.Now())
	t.Device.ActBackward(act, grad, pre)
}

// SumRows implements Device.
func (t *Throttled) SumRows(dst, x []float32, rows, cols int) {
	defer t.pay(time.Now())
	t.Device.SumRows(dst, x, rows, cols)
}

// SoftmaxCrossEntropy implements Device.
func (t *Throttled) SoftmaxCrossEntropy(logits []float32, labels []int32, rows, cols int, grad []float32, scale float32) (float64, int) {
	defer t.pay(time.Now())
	return t.Device.SoftmaxCrossEntropy(logits, labels, rows, cols, grad, scale)
}

// Encode implements Device.
func (t *Throttled) Encode(d tensor.DType, dst []uint16, src []float32) {
	defer t.pay(time.Now())
	t.Device.Encode(d, dst, src)
}

// takeSlowdown removes the generic slowdown option from opts.
func takeSlowdown(opts Options) (float64, error) {
	v, ok := opts["slowdown"]
	if !ok {
		return 1, nil
	}
	delete(opts, "slowdown")
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 1 && f <= 1000) {
		return 0, fmt.Errorf("device option slowdown=%q: want a number in [1, 1000]", v)
	}
	return f, nil
}
