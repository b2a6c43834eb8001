package collective

import (
	"fmt"
	"strings"

	"github.com/loomtrain/loom/tensor"
	"go.uber.org/zap"
)

// Compression selects the wire format of float32 buffers.
type Compression uint8

const (
	// CompressNone sends float32 as float32: sums are exact where fp32 is.
	CompressNone Compression = iota
	// CompressBF16 sends values as bfloat16 (half the bytes). Every hop
	// widens to fp32, sums, and narrows the partial sum once.
	CompressBF16
	// CompressF16 sends values as IEEE half: more mantissa than bf16, but
	// magnitudes above 65504 become Inf.
	CompressF16
)

// String returns the spelling ParseCompression accepts.
func (c Compression) String() string {
	switch c {
	case CompressNone:
		return "none"
	case CompressBF16:
		return "bf16"
	case CompressF16:
		return "fp16"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression accepts "", "none", "fp32", "bf16", "fp16" (case-insensitive).
func ParseCompression(s string) (Compression, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "none", "fp32", "f32":
		return CompressNone, nil
	case "bf16", "bfloat16":
		return CompressBF16, nil
	case "fp16", "f16", "half":
		return CompressF16, nil
	}
	return 0, fmt.Errorf("%w: unknown compression %q (want none, bf16 or fp16)", ErrConfig, s)
}

// wireDType is the dtype float32 buffers travel as.
func (c Compression) wireDType() tensor.DType {
	switch c {
	case CompressBF16:
		return tensor.BF16
	case CompressF16:
		return tensor.F16
	}
	return tensor.F32
}

// unitRoundoff is the relative rounding error of one narrowing to the wire
// dtype (2^-p for a p-bit significand, round to nearest).
func (c Compression) unitRoundoff() float64 {
	switch c {
	case CompressBF16:
		return 1.0 / (1 << 8)
	case CompressF16:
		return 1.0 / (1 << 11)
	}
	return 0
}

// ErrorBound is the largest absolute error an AllReduce with this
// compression may add to element i, given the ranks' inputs x_r[i]:
//
//	|result - exact| <= γ(n) · Σ_r |x_r[i]|,  γ(n) = n·u / (1 - n·u)
//
// with u the unit roundoff of the wire dtype (2^-8 for bf16, 2^-11 for fp16)
// and n the number of ranks: each value is narrowed at most n times on its
// way round the ring (n-1 partial sums, then the final sum). Overflow to Inf
// (fp16 above 65504) is outside the bound. For CompressNone the bound is the
// float32 summation error of n terms, returned with u = 2^-24.
func (c Compression) ErrorBound(n int, sumAbs float64) float64 {
	u := c.unitRoundoff()
	if u == 0 {
		u = 1.0 / (1 << 24)
	}
	nu := float64(n) * u
	return nu / (1 - nu) * sumAbs
}

// Config configures a Communicator. All ranks of a group must agree on every
// field except Rank, Logger and Observer.
type Config struct {
	// Generation is the plan generation; it must equal the transport's.
	Generation uint64
	// Rank is this process's rank; it must equal the transport's.
	Rank int
	// Order is the ring: Order[i+1] receives from Order[i], and Order[0] from
	// Order[n-1]. It must be a permutation of 0..n-1. Empty means 0,1,..,n-1.
	Order []int
	// Compress selects the wire format of float32 buffers in reducing
	// collectives (AllReduce, ReduceScatter, AllGather). Broadcast, Send and
	// Recv always move exact values.
	Compress Compression
	// ChunkBytes is the pipelining unit: each ring segment travels as frames
	// of at most this many wire bytes, so that sending one chunk overlaps
	// receiving and reducing the next.
	ChunkBytes int
	// Logger receives failure events; nil means zap.NewNop().
	Logger *zap.Logger
	// Observer, if set, is told of every completed AllReduce.
	Observer Observer
}

// DefaultConfig returns a Config with the defaults filled in; the caller
// sets Generation, Rank and, usually, Order.
func DefaultConfig() Config {
	return Config{ChunkBytes: 512 << 10}
}

// Validate reports the first problem with c, wrapping ErrConfig. It checks
// what it can without knowing the group size; New checks the rest.
func (c Config) Validate() error {
	if c.Rank < 0 {
		return fmt.Errorf("%w: Rank %d is negative", ErrConfig, c.Rank)
	}
	if c.ChunkBytes < 64 || c.ChunkBytes > DefaultMaxFrameBytes {
		return fmt.Errorf("%w: ChunkBytes %d outside [64, %d]", ErrConfig, c.ChunkBytes, DefaultMaxFrameBytes)
	}
	if c.Compress > CompressF16 {
		return fmt.Errorf("%w: unknown compression %d", ErrConfig, c.Compress)
	}
	if len(c.Order) > 0 {
		seen := make([]bool, len(c.Order))
		for i, r := range c.Order {
			if r < 0 || r >= len(c.Order) || seen[r] {
				return fmt.Errorf("%w: Order %v is not a permutation of 0..%d (position %d)", ErrConfig, c.Order, len(c.Order)-1, i)
			}
			seen[r] = true
		}
		if c.Rank >= len(c.Order) {
			return fmt.Errorf("%w: Rank %d not in Order %v", ErrConfig, c.Rank, c.Order)
		}
	}
	if !littleEndian {
		return fmt.Errorf("%w: the wire format needs a little-endian host", ErrConfig)
	}
	return nil
}

// validateFor checks c against the transport it will run on.
func (c Config) validateFor(t Transport) error {
	if err := c.Validate(); err != nil {
		return err
	}
	n := t.Size()
	switch {
	case t.Generation() != c.Generation:
		return fmt.Errorf("%w: Generation %d, transport is for %d", ErrConfig, c.Generation, t.Generation())
	case t.Rank() != c.Rank:
		return fmt.Errorf("%w: Rank %d, transport is rank %d", ErrConfig, c.Rank, t.Rank())
	case len(c.Order) != 0 && len(c.Order) != n:
		return fmt.Errorf("%w: Order has %d ranks, transport has %d", ErrConfig, len(c.Order), n)
	}
	return nil
}
