package device

import (
	"fmt"

	"github.com/loomtrain/loom/tensor"
)

// This file is the device API v2: memory the device owns and the ops a
// transformer needs, over views of that memory. It follows ggml's layering:
// a Backend (the hardware and its one ordered stream) allocates Buffers; a
// View is a range of a Buffer and owns nothing; the host reaches device
// memory only through Upload/Download. A backend never copies a tensor to
// the host except what the caller asks for.
//
// Stream semantics: ops run in the order they are called. A backend may
// queue them (CUDA) or run them at once (CPU); Download and Sync wait for
// every op issued before them. Shape errors in an op are programming errors
// and panic, as a BLAS would; Alloc and Sync return errors.
//
// Layouts are row-major. Unless an op says otherwise, views are F32, every
// output is overwritten, and an output may not alias an input. "Accumulates"
// means the op adds into its output (gradients: backward accumulates, the
// step zeroes gradients once).

// Buffer is one allocation in a device's memory, of Len elements of DType,
// zeroed when allocated. Buffers are not safe for concurrent use; the
// backend that made a buffer is the only one that may use it.
type Buffer interface {
	DType() tensor.DType
	Len() int
	// Free returns the memory to the backend; the buffer and its views
	// must not be used afterwards. Free twice is a no-op.
	Free()
}

// View is the contiguous elements [Off, Off+N) of Buf.
type View struct {
	Buf    Buffer
	Off, N int
}

// Whole views all of b.
func Whole(b Buffer) View { return View{Buf: b, N: b.Len()} }

// Slice returns elements [lo, hi) of v.
func (v View) Slice(lo, hi int) View {
	if lo < 0 || hi < lo || hi > v.N {
		panic(fmt.Sprintf("device: view slice [%d:%d] of %d elements", lo, hi, v.N))
	}
	return View{Buf: v.Buf, Off: v.Off + lo, N: hi - lo}
}

// DType is the element type of the underlying buffer.
func (v View) DType() tensor.DType { return v.Buf.DType() }

// IsZero reports whether v is the zero View (no buffer), which ops that take
// an optional output read as "not wanted".
func (v View) IsZero() bool { return v.Buf == nil }

// GemmSpec is one (optionally batched, strided) matrix product:
//
//	for i in [0, Batch): C_i = Alpha·op(A_i)·op(B_i) + Beta·C_i
//
// where X_i starts StrideX elements after X_{i-1} in its view, op(X) is X or
// Xᵀ, op(A) is M×K, op(B) is K×N and C is M×N F32 with row stride LDC. LDA and
// LDB are the row strides of A and B as stored. Batch 0 means 1.
//
// Precision is the dtype the products are formed in: F32, or BF16/F16 with
// F32 accumulation. A and B are views of that dtype, or F32 views that the
// backend rounds to Precision as it reads them (0 means the operands' dtype).
// With Beta == 0, C is overwritten (NaNs in C do not propagate).
type GemmSpec struct {
	TransA, TransB            bool
	M, N, K                   int
	Alpha, Beta               float32
	A, B, C                   View
	LDA, LDB, LDC             int
	Batch                     int
	StrideA, StrideB, StrideC int
	Precision                 tensor.DType
}

// AdamW is one decoupled-weight-decay Adam update (Loshchilov & Hutter):
//
//	g  = GradScale·grad
//	m  = Beta1·m + (1−Beta1)·g
//	v  = Beta2·v + (1−Beta2)·g²
//	p -= LR·( m/(1−Beta1^Step) / (√(v/(1−Beta2^Step)) + Eps) + WeightDecay·p )
//
// Step counts from 1. Coefficients derived from the hyper-parameters are
// formed in float64 from the exact values given, then used in float32.
type AdamW struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int
	GradScale                          float32
}

// SGD is one update with heavy-ball momentum and decoupled weight decay:
//
//	g   = GradScale·grad + WeightDecay·p
//	mom = Momentum·mom + g     (skipped when Momentum is 0; mom may be zero)
//	p  -= LR·mom
type SGD struct {
	LR, Momentum, WeightDecay float64
	GradScale                 float32
}

// Backend is a compute device with its own memory and one ordered stream.
// A Backend is used from one goroutine at a time; it parallelises inside.
type Backend interface {
	// Name identifies the backend and the kernel it selected, e.g. "cpu/avx512".
	Name() string
	// Threads is the number of OS threads the backend computes on (1 for
	// a GPU's host side).
	Threads() int
	// Memory reports the bytes this backend's buffers now hold and the most
	// it can hold (0: unknown).
	Memory() (used, limit int64)

	// Alloc returns a zeroed buffer of n elements of dt (F32, BF16, F16 or
	// I32). It fails, naming the sizes, when the memory is not there.
	Alloc(dt tensor.DType, n int) (Buffer, error)
	// Upload copies src into dst (len(src) == dst.N), rounding to dst's
	// dtype if it is 16-bit.
	Upload(dst View, src []float32)
	// UploadInt32 copies src into the I32 view dst.
	UploadInt32(dst View, src []int32)
	// Download copies src (any float dtype, widened to float32) into dst,
	// after every op issued before it.
	Download(dst []float32, src View)
	// Sync waits for every issued op and returns the first error a queued
	// op met since the last Sync (nil on backends that run ops at once).
	Sync() error

	// Copy copies src to dst (equal N), converting between float dtypes.
	Copy(dst, src View)
	// Fill sets every element of x to val.
	Fill(x View, val float32)
	// Scale multiplies x by s in place.
	Scale(x View, s float32)
	// Add writes out = a + b elementwise (out may alias a or b).
	Add(out, a, b View)

	// MatMul runs one GemmSpec.
	MatMul(g GemmSpec)
	// BiasAdd adds bias (len cols) to every row of the rows×cols x.
	BiasAdd(x, bias View, rows, cols int)
	// BiasGrad accumulates the column sums of the rows×cols dy into dbias.
	BiasGrad(dbias, dy View, rows, cols int)

	// Embedding writes out[i,:] = table[ids[i],:] for the n I32 ids, each
	// row c wide; with accumulate it adds instead (token + position).
	Embedding(out, table, ids View, n, c int, accumulate bool)
	// EmbeddingBackward accumulates dout[i,:] into dtable[ids[i],:]
	// (ids may repeat).
	EmbeddingBackward(dtable, dout, ids View, n, c int)

	// LayerNorm normalises each of the rows of x (c wide) and writes
	// out = (x−μ)·rstd·w + b, with the per-row μ and rstd = 1/√(σ²+eps)
	// into mean and rstd (len rows) for the backward pass.
	LayerNorm(out, mean, rstd, x, w, b View, rows, c int, eps float32)
	// LayerNormBackward accumulates into dx, dw and db the gradients of
	// LayerNorm given dout and what the forward saved.
	LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd View, rows, c int)

	// GELU writes out = gelu(x) with the tanh approximation (GPT-2's
	// "gelu_new", PyTorch's approximate="tanh").
	GELU(out, x View)
	// GELUBackward writes dx = dout·gelu'(x); dx may alias dout.
	GELUBackward(dx, x, dout View)
	// Softmax writes the row softmax of the rows×cols x into out (which
	// may alias x).
	Softmax(out, x View, rows, cols int)

	// Attention is fused causal multi-head self-attention over qkv packed
	// as (b, t, 3, heads, hs) — per token the queries, keys and values of
	// every head, as a c_attn projection writes them — scaled by 1/√hs.
	// It writes out (b, t, heads, hs) and, per (b, heads, t), the
	// log-sum-exp of the scaled scores into lse for the backward pass. It
	// never materialises the t×t score matrix of a head: memory beyond its
	// arguments is O(t).
	Attention(out, lse, qkv View, b, t, heads, hs int)
	// AttentionBackward writes the gradient of qkv into dqkv (same layout;
	// overwritten) from dout and the forward's qkv, out and lse,
	// recomputing scores tile by tile.
	AttentionBackward(dqkv, dout, qkv, out, lse View, b, t, heads, hs int)

	// CrossEntropy takes rows×v logits and rows I32 targets and writes each
	// row's loss −log softmax(logits)[target] into losses (len rows). If
	// dlogits is not the zero View it receives scale·(softmax − onehot);
	// dlogits may alias logits. A row whose target is negative is ignored:
	// loss 0 and a zero gradient row.
	CrossEntropy(losses, dlogits, logits, targets View, rows, v int, scale float32)

	// Sum adds the sum of x into out[0] (accumulated in float64 inside).
	Sum(out, x View)
	// SumSquares adds the sum of the squares of x into out[0] (global
	// gradient norms: one call per flat gradient buffer).
	SumSquares(out, x View)
	// NonFinite adds the count of NaN and ±Inf elements of x into out[0].
	NonFinite(out, x View)

	// AdamWUpdate applies h to parameters p with gradient g and moments m
	// and v (all the same N).
	AdamWUpdate(p, g, m, v View, h AdamW)
	// SGDUpdate applies h; mom may be the zero View when Momentum is 0.
	SGDUpdate(p, g, mom View, h SGD)
}

// HostMemory is implemented by backends whose buffers live in host memory
// (the CPU): the collective and the checkpointer read and write such views
// in place instead of staging copies. The slice aliases device memory and is
// valid until the buffer is freed.
type HostMemory interface {
	HostF32(v View) []float32
	HostInt32(v View) []int32
}
