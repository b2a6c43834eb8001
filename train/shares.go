package train

import "fmt"

// Shares is this rank's part of each global batch: the plan gives every rank
// a share (samples per full batch, summing exactly to the global batch), in
// rank order. A rank takes the contiguous slice of the batch after the
// shares of the ranks before it.
type Shares struct {
	All  []int // every rank's share, rank order
	Rank int
}

// NewShares checks that shares sum to global and rank is in range.
func NewShares(all []int, rank, global int) (*Shares, error) {
	sum := 0
	for r, s := range all {
		if s < 0 {
			return nil, fmt.Errorf("rank %d has negative batch share %d", r, s)
		}
		sum += s
	}
	if sum != global {
		return nil, fmt.Errorf("batch shares %v sum to %d, want the global batch %d", all, sum, global)
	}
	if rank < 0 || rank >= len(all) {
		return nil, fmt.Errorf("rank %d outside %d ranks", rank, len(all))
	}
	return &Shares{All: append([]int(nil), all...), Rank: rank}, nil
}

// Range returns this rank's slice [lo, hi) of a batch of size rows. For a
// full batch that is its share; a short batch (the end of an epoch) is split
// in proportion to the shares, largest remainders first, so every rank
// computes the same split and every sample is used exactly once.
func (s *Shares) Range(rows int) (lo, hi int) {
	sizes := splitProportional(s.All, rows)
	for r := 0; r < s.Rank; r++ {
		lo += sizes[r]
	}
	return lo, lo + sizes[s.Rank]
}

// splitProportional divides rows among len(weights) parts proportionally
// to weights, as integers summing exactly to rows.
func splitProportional(weights []int, rows int) []int {
	total := 0
	for _, w := range weights {
		total += w
	}
	out := make([]int, len(weights))
	if total == 0 {
		out[0] = rows
		return out
	}
	if rows == total {
		copy(out, weights)
		return out
	}
	rem := make([]int, len(weights))
	given := 0
	for i, w := range weights {
		out[i] = w * rows / total
		rem[i] = w * rows % total
		given += out[i]
	}
	for ; given < rows; given++ {
		best := 0
		for i := range rem {
			if rem[i] > rem[best] {
				best = i
			}
		}
		out[best]++
		rem[best] = -1
	}
	return out
}
