package cpu

import (
	"math"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// Rows handled per goroutine at least, so small matrices stay on one thread.
const minRowsPerThread = 16

// BiasAct implements device.Device: one pass adds the bias, stores the
// pre-activation and applies the activation.
func (d *Device) BiasAct(act device.Activation, x, bias, pre []float32, rows, cols int) {
	d.parallelFor(rows, minRowsPerThread, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := x[i*cols : (i+1)*cols]
			var p []float32
			if pre != nil && act != device.None {
				p = pre[i*cols : (i+1)*cols]
			}
			biasActRow(act, row, bias, p)
		}
	})
}

func biasActRow(act device.Activation, row, bias, pre []float32) {
	if bias != nil {
		bias = bias[:len(row)]
		for j := range row {
			row[j] += bias[j]
		}
	}
	if pre != nil {
		copy(pre, row)
	}
	switch act {
	case device.ReLU:
		for j, v := range row {
			if v < 0 {
				row[j] = 0
			}
		}
	case device.GELU:
		for j, v := range row {
			row[j] = gelu(v)
		}
	}
}

// GELU uses the tanh approximation (PyTorch's approximate="tanh").
const (
	geluC = 0.7978845608028654 // sqrt(2/π)
	geluA = 0.044715
)

func gelu(x float32) float32 {
	v := float64(x)
	return float32(0.5 * v * (1 + math.Tanh(geluC*(v+geluA*v*v*v))))
}

func geluGrad(x float32) float32 {
	v := float64(x)
	t := math.Tanh(geluC * (v + geluA*v*v*v))
	return float32(0.5*(1+t) + 0.5*v*(1-t*t)*geluC*(1+3*geluA*v*v))
}

// ActBackward implements device.Device.
func (d *Device) ActBackward(act device.Activation, grad, pre []float32) {
	if act == device.None {
		return
	}
	pre = pre[:len(grad)]
	d.parallelFor(len(grad), 4096, func(lo, hi int) {
		g, p := grad[lo:hi], pre[lo:hi]
		switch act {
		case device.ReLU:
			for j, v := range p {
				if v <= 0 {
					g[j] = 0
				}
			}
		case device.GELU:
			for j, v := range p {
				g[j] *= geluGrad(v)
			}
		}
	})
}

// SumRows implements device.Device. It runs on one thread: the result is a
// single row and the pass is memory-bound.
func (d *Device) SumRows(dst, x []float32, rows, cols int) {
	dst = dst[:cols]
	for i := 0; i < rows; i++ {
		row := x[i*cols : (i+1)*cols]
		for j, v := range row {
			dst[j] += v
		}
	}
}

// SoftmaxCrossEntropy implements device.Device with a numerically stable
// log-sum-exp computed in float64 per row.
func (d *Device) SoftmaxCrossEntropy(logits []float32, labels []int32, rows, cols int, grad []float32, scale float32) (float64, int) {
	// Per-row results are summed in row order afterwards, so the loss is
	// bitwise independent of the thread count.
	losses := make([]float64, rows)
	hits := make([]bool, rows)
	d.parallelFor(rows, minRowsPerThread, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var g []float32
			if grad != nil {
				g = grad[i*cols : (i+1)*cols]
			}
			losses[i], hits[i] = softmaxCERow(logits[i*cols:(i+1)*cols], int(labels[i]), g, scale)
		}
	})
	var loss float64
	correct := 0
	for i, l := range losses {
		loss += l
		if hits[i] {
			correct++
		}
	}
	return loss, correct
}

func softmaxCERow(row []float32, label int, grad []float32, scale float32) (float64, bool) {
	maxV, arg := row[0], 0
	for j, v := range row {
		if v > maxV {
			maxV, arg = v, j
		}
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v - maxV))
	}
	lse := float64(maxV) + math.Log(sum)
	if grad != nil {
		inv := 1 / sum
		for j, v := range row {
			p := math.Exp(float64(v-maxV)) * inv
			if j == label {
				p--
			}
			grad[j] = scale * float32(p)
		}
	}
	return lse - float64(row[label]), arg == label
}

// Encode implements device.Device.
func (d *Device) Encode(dt tensor.DType, dst []uint16, src []float32) {
	d.parallelFor(len(src), 1<<14, func(lo, hi int) {
		tensor.EncodeHalf(dt, dst[lo:hi], src[lo:hi])
	})
}
