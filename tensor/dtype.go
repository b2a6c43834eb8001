// Package tensor holds the value types every other loom package shares: Shape,
// DType (F32, BF16, F16), Tensor, and exact conversions between the dtypes.
//
// Conversions to the 16-bit formats round to nearest, ties to even, keep NaN a
// (quiet) NaN, saturate to ±Inf on overflow, and produce subnormals where the
// target format has them. Conversions to float32 are exact.
package tensor

import (
	"fmt"
	"strings"
)

// DType is the element type of a tensor.
type DType uint8

// The element types loom computes in. Master weights are always F32.
const (
	F32 DType = iota + 1
	BF16
	F16
)

// I32 is the dtype of token ids and labels in device buffers. It is not a
// compute or checkpoint dtype: Valid and ParseDType leave it out.
const I32 DType = 16

// String returns the canonical lower-case name used in configs and files.
func (d DType) String() string {
	switch d {
	case F32:
		return "fp32"
	case BF16:
		return "bf16"
	case F16:
		return "fp16"
	case I32:
		return "int32"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// SafetensorsName returns the dtype name the safetensors format uses.
func (d DType) SafetensorsName() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case F16:
		return "F16"
	case I32:
		return "I32"
	}
	return d.String()
}

// Size is the number of bytes one element occupies.
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case BF16, F16:
		return 2
	}
	return 0
}

// Valid reports whether d is one of the floating dtypes (F32, BF16, F16).
func (d DType) Valid() bool { return d >= F32 && d <= F16 }

// ParseDType accepts the config spellings fp32/f32/float32, bf16/bfloat16 and
// fp16/f16/float16 (case-insensitive).
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "fp32", "f32", "float32":
		return F32, nil
	case "bf16", "bfloat16":
		return BF16, nil
	case "fp16", "f16", "float16", "half":
		return F16, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want fp32, bf16 or fp16)", s)
}
