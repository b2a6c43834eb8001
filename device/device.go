// Package device defines the compute interface a worker trains on, the
// registry of device backends, and the measured capability profile a worker
// reports to the coordinator.
//
// All buffers are row-major host slices. Activations, gradients and
// accumulators are float32; only GEMM operands may be 16-bit (BF16/F16) and
// are then accumulated in float32. A Device may be called from one goroutine
// at a time; it parallelises internally.
package device

import "github.com/loomtrain/loom/tensor"

// Matrix is a row-major operand for Gemm. Exactly one of F32 (DType F32) or
// U16 (DType BF16/F16 bit patterns) holds the data; LD is the row stride in
// elements (>= the number of stored columns).
type Matrix struct {
	DType tensor.DType
	F32   []float32
	U16   []uint16
	LD    int
}

// F32Matrix wraps a float32 slice with row stride ld.
func F32Matrix(data []float32, ld int) Matrix { return Matrix{DType: tensor.F32, F32: data, LD: ld} }

// HalfMatrix wraps 16-bit bit patterns of dtype d with row stride ld.
func HalfMatrix(d tensor.DType, data []uint16, ld int) Matrix {
	return Matrix{DType: d, U16: data, LD: ld}
}

// Activation selects the elementwise nonlinearity of a fused kernel.
type Activation uint8

// Supported activations. None is identity (a plain bias add).
const (
	None Activation = iota
	ReLU
	GELU
)

// String returns the config name of the activation.
func (a Activation) String() string {
	switch a {
	case ReLU:
		return "relu"
	case GELU:
		return "gelu"
	}
	return "none"
}

// Device is what the model and optimizer need from a compute backend.
type Device interface {
	// Name identifies the backend and the kernel it selected, e.g. "cpu/avx512".
	Name() string
	// Threads is the number of OS threads the device computes on.
	Threads() int

	// Gemm computes C = alpha·op(A)·op(B) + beta·C where op(X) is X or Xᵀ,
	// op(A) is m×k, op(B) is k×n and C is m×n float32 with row stride ldc.
	// A and B have the same dtype; 16-bit inputs accumulate in float32.
	// With beta == 0, C is overwritten (NaNs in C do not propagate).
	Gemm(transA, transB bool, m, n, k int, alpha float32, a, b Matrix, beta float32, c []float32, ldc int)

	// BiasAct computes, for an rows×cols matrix x, pre = x + bias (bias of
	// length cols, broadcast over rows; nil means zero) and x = act(pre).
	// pre may be nil when the caller needs no backward pass; with act None
	// pre is not written.
	BiasAct(act Activation, x, bias, pre []float32, rows, cols int)

	// ActBackward multiplies grad elementwise by act'(pre).
	ActBackward(act Activation, grad, pre []float32)

	// SumRows adds the column sums of the rows×cols matrix x to dst (len cols).
	SumRows(dst, x []float32, rows, cols int)

	// SoftmaxCrossEntropy takes rows×cols logits and integer labels, returns
	// the summed (not averaged) cross-entropy loss and the count of rows whose
	// arg-max equals the label. If grad is non-nil it receives
	// scale·(softmax(logits) − onehot(label)) per row.
	SoftmaxCrossEntropy(logits []float32, labels []int32, rows, cols int, grad []float32, scale float32) (loss float64, correct int)

	// Encode converts src to the 16-bit dtype d into dst (len >= len(src)).
	Encode(d tensor.DType, dst []uint16, src []float32)
}
