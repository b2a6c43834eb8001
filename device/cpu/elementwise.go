package cpu

import (
	"math"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/internal/vec"
	"github.com/loomtrain/loom/tensor"
)

// Elements handled per goroutine at least, so small matrices stay on one
// thread (a fork costs a few microseconds). GELU does ~10× the work per
// element, so it forks sooner.
const (
	minElemsPerThread     = 1 << 15
	minGELUElemsPerThread = 1 << 12
)

func minRows(act device.Activation, cols int) int {
	if act == device.GELU {
		return max(1, minGELUElemsPerThread/max(cols, 1))
	}
	return max(1, minElemsPerThread/max(cols, 1))
}

// BiasAct implements device.Device in one pass per row: each element is
// loaded once, biased, stored to pre and activated.
func (d *Device) BiasAct(act device.Activation, x, bias, pre []float32, rows, cols int) {
	if act == device.None {
		pre = nil
	}
	d.parallelFor(rows, minRows(act, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := x[i*cols : (i+1)*cols]
			var p []float32
			if pre != nil {
				p = pre[i*cols : (i+1)*cols]
			}
			biasActRow(act, row, bias, p)
		}
	})
}

// relu is max(x, 0) without a branch (a sign test mispredicts half the time
// on activations): a set sign bit, including −0, gives +0.
func relu(x float32) float32 {
	b := math.Float32bits(x)
	return math.Float32frombits(b &^ uint32(int32(b)>>31))
}

func biasActRow(act device.Activation, row, bias, pre []float32) {
	if bias != nil {
		bias = bias[:len(row)]
	}
	if pre != nil {
		pre = pre[:len(row)]
	}
	switch {
	case act == device.None:
		if bias != nil {
			vec.Add(row, bias) // v + b, bitwise the scalar loop
		}
	case act == device.ReLU && bias != nil && pre != nil:
		for j := simdBiasReLU(row, bias, pre); j < len(row); j++ {
			p := row[j] + bias[j]
			pre[j] = p
			row[j] = relu(p)
		}
	case act == device.GELU && bias != nil && pre != nil:
		for j, v := range row {
			p := v + bias[j]
			pre[j] = p
			row[j] = gelu(p)
		}
	default: // rarer combinations: missing bias or pre
		for j, v := range row {
			if bias != nil {
				v += bias[j]
			}
			if pre != nil {
				pre[j] = v
			}
			if act == device.ReLU {
				row[j] = relu(v)
			} else {
				row[j] = gelu(v)
			}
		}
	}
}

// GELU uses the tanh approximation (PyTorch's approximate="tanh"):
// gelu(x) = ½x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³). With
// 1 + tanh(u) = 2σ(2u) this is x·σ(2u), one exp per element in float32;
// relative error against the float64 formula stays below 1e-6.
const (
	geluC = 0.7978845608028654 // sqrt(2/π)
	geluA = 0.044715
)

// geluSig returns σ(2u) for the GELU argument x.
func geluSig(x float32) float32 {
	u := geluC * (x + geluA*x*x*x)
	return 1 / (1 + exp32(-2*u))
}

func gelu(x float32) float32 { return x * geluSig(x) }

// geluGrad is d gelu/dx = s + 2·√(2/π)·x·s(1−s)(1 + 3·0.044715x²), s = σ(2u).
func geluGrad(x float32) float32 {
	s := geluSig(x)
	return s + 2*geluC*x*s*(1-s)*(1+3*geluA*x*x)
}

// exp32 is eˣ in float32 with relative error ≲ 2e-7 over its range: x is
// split as n·ln2 + r, |r| ≤ ln2/2, and eʳ comes from a degree-6 polynomial.
// Inputs above 88.72 give +Inf, below −87.33 give 0, NaN gives NaN.
func exp32(x float32) float32 {
	const (
		log2e = 1.44269504088896341
		ln2Hi = 0.693359375
		ln2Lo = -2.12194440e-4
	)
	switch {
	case x != x:
		return x
	case x > 88.72283:
		return float32(math.Inf(1))
	case x < -87.33654:
		return 0
	}
	n := float32(math.Floor(float64(x*log2e + 0.5)))
	r := x - n*ln2Hi - n*ln2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720))))))
	// The clamps keep n in [−126, 128]: 2ⁿ is a normal float except 2¹²⁸,
	// applied as 2·2¹²⁷. p·2ⁿ may round to a subnormal.
	if n > 127 {
		return 2 * p * math.Float32frombits(254<<23)
	}
	return p * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// ActBackward implements device.Device.
func (d *Device) ActBackward(act device.Activation, grad, pre []float32) {
	if act == device.None {
		return
	}
	pre = pre[:len(grad)]
	minChunk := minElemsPerThread
	if act == device.GELU {
		minChunk = minGELUElemsPerThread
	}
	d.parallelFor(len(grad), minChunk, func(lo, hi int) {
		g, p := grad[lo:hi], pre[lo:hi]
		switch act {
		case device.ReLU:
			// grad stays where pre > 0; pre ≤ 0 (−0 included, whose bits
			// are negative as int32) clears it. Integer select: no branch.
			for j, v := range p {
				gb := math.Float32bits(g[j])
				if int32(math.Float32bits(v)) <= 0 {
					gb = 0
				}
				g[j] = math.Float32frombits(gb)
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
		// Each column adds its rows in order (vec.Add is bitwise the
		// scalar loop).
		vec.Add(dst, x[i*cols:(i+1)*cols])
	}
}

// SoftmaxCrossEntropy implements device.Device with a numerically stable
// log-sum-exp: exponentials in float32, sums in float64, one pass to find
// the maximum and one that both sums and (with grad) stores eˣ⁻ᵐᵃˣ, which a
// final pass scales into the gradient.
func (d *Device) SoftmaxCrossEntropy(logits []float32, labels []int32, rows, cols int, grad []float32, scale float32) (float64, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Per-row results are summed in row order afterwards, so the loss is
	// bitwise independent of the thread count.
	losses := grow(&d.ceLoss, rows)
	hits := grow(&d.ceHit, rows)
	d.parallelFor(rows, max(1, minGELUElemsPerThread/max(cols, 1)), func(lo, hi int) { // exp-bound, like GELU
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
	if grad != nil {
		grad = grad[:len(row)]
		for j, v := range row {
			e := exp32(v - maxV)
			grad[j] = e
			sum += float64(e)
		}
		inv := float32(float64(scale) / sum)
		for j := range grad {
			grad[j] *= inv
		}
		grad[label] -= scale
	} else {
		for _, v := range row {
			sum += float64(exp32(v - maxV))
		}
	}
	lse := float64(maxV) + math.Log(sum)
	return lse - float64(row[label]), arg == label
}

// Encode implements device.Device.
func (d *Device) Encode(dt tensor.DType, dst []uint16, src []float32) {
	d.parallelFor(len(src), 1<<14, func(lo, hi int) {
		d.kern.encodeHalf(dt, dst[lo:hi], src[lo:hi])
	})
}
