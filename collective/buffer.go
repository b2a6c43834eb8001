package collective

import (
	"fmt"

	"github.com/loomtrain/loom/internal/vec"
	"github.com/loomtrain/loom/tensor"
)

// Buffer is the data of one collective call: a float32 slice, or a slice of
// 16-bit patterns of dtype BF16 or F16. It is a small value type (pass it by
// value); the slices are used in place, never copied or retained.
type Buffer struct {
	DType tensor.DType
	F32   []float32
	U16   []uint16
}

// F32 wraps a float32 slice.
func F32(b []float32) Buffer { return Buffer{DType: tensor.F32, F32: b} }

// Half wraps a slice of bf16 or fp16 bit patterns (d is tensor.BF16 or tensor.F16).
func Half(d tensor.DType, b []uint16) Buffer { return Buffer{DType: d, U16: b} }

// TensorBuffer wraps the data of t (any dtype).
func TensorBuffer(t *tensor.Tensor) Buffer {
	return Buffer{DType: t.DType, F32: t.F32, U16: t.U16}
}

// Len is the number of elements.
func (b Buffer) Len() int {
	if b.DType == tensor.F32 {
		return len(b.F32)
	}
	return len(b.U16)
}

func (b Buffer) check() error {
	switch b.DType {
	case tensor.F32:
		if b.U16 != nil {
			return fmt.Errorf("%w: fp32 buffer with 16-bit data", ErrBufferSize)
		}
	case tensor.BF16, tensor.F16:
		if b.F32 != nil {
			return fmt.Errorf("%w: %s buffer with fp32 data", ErrBufferSize, b.DType)
		}
	default:
		return fmt.Errorf("%w: dtype %v", ErrBufferSize, b.DType)
	}
	return nil
}

// bytes views elements [lo, hi) as bytes, without copying.
func (b Buffer) bytes(lo, hi int) []byte {
	if b.DType == tensor.F32 {
		return f32Bytes(b.F32[lo:hi])
	}
	return u16Bytes(b.U16[lo:hi])
}

// Shard returns the element range [lo, hi) that rank owns when size elements
// are split over n ranks: contiguous, in rank order, the first size%n ranks
// one element longer. ReduceScatter leaves rank r's sum in Shard(size, n, r);
// AllGather takes rank r's contribution from it.
func Shard(size, n, rank int) (lo, hi int) {
	q, r := size/n, size%n
	lo = rank*q + min(rank, r)
	hi = lo + q
	if rank < r {
		hi++
	}
	return lo, hi
}

// Reduction kernels. Each hop of a reducing collective widens the received
// values to fp32, adds, and (for 16-bit buffers) narrows the result once.

// addF32 sets dst[i] += src[i].
func addF32(dst, src []float32) { vec.Add(dst, src) }

// addWire sets dst[i] += widen(src[i]) for 16-bit wire values of dtype d.
func addWire(d tensor.DType, dst []float32, src []uint16) {
	src = src[:len(dst)]
	if d == tensor.BF16 {
		i := simdAddBF16(dst, src)
		for ; i < len(src); i++ {
			dst[i] += tensor.FromBF16(src[i])
		}
		return
	}
	for i := simdAddF16(dst, src); i < len(src); i++ {
		dst[i] += tensor.FromF16(src[i])
	}
}

// addHalf sets dst[i] = narrow(widen(dst[i]) + widen(src[i])) in dtype d.
func addHalf(d tensor.DType, dst, src []uint16) {
	src = src[:len(dst)]
	if d == tensor.BF16 {
		for i, h := range src {
			dst[i] = tensor.ToBF16(tensor.FromBF16(dst[i]) + tensor.FromBF16(h))
		}
		return
	}
	for i, h := range src {
		dst[i] = tensor.ToF16(tensor.FromF16(dst[i]) + tensor.FromF16(h))
	}
}

// encodeWire narrows src into dst (len(dst) >= len(src)) in the 16-bit dtype
// d, exactly as tensor.EncodeHalf, with SIMD paths.
func encodeWire(d tensor.DType, dst []uint16, src []float32) {
	var i int
	if d == tensor.BF16 {
		i = simdEncodeBF16(dst, src)
	} else {
		i = simdEncodeF16(dst, src)
	}
	tensor.EncodeHalf(d, dst[i:], src[i:])
}

// decodeWire widens src into dst (len(dst) >= len(src)), exactly as
// tensor.DecodeHalf, with SIMD paths.
func decodeWire(d tensor.DType, dst []float32, src []uint16) {
	var i int
	if d == tensor.BF16 {
		i = simdDecodeBF16(dst, src)
	} else {
		i = simdDecodeF16(dst, src)
	}
	tensor.DecodeHalf(d, dst[i:], src[i:])
}
