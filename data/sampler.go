package data

import (
	"fmt"
	"math/rand/v2"
)

// Position is where a sampler stands: the next sample to hand out is
// Order(epoch)[Offset]. It is what a checkpoint saves.
type Position struct {
	Epoch  int `json:"epoch"`
	Offset int `json:"offset"`
}

// Sampler hands out the indices of an N-example dataset in an order that
// depends only on (Seed, epoch): never on the world size, the batch size or
// how often it was saved and restored. Not safe for concurrent use.
type Sampler struct {
	n     int
	seed  uint64
	pos   Position
	order []int // permutation for pos.Epoch
}

// NewSampler starts at epoch 0, offset 0.
func NewSampler(n int, seed uint64) *Sampler {
	s := &Sampler{n: n, seed: seed}
	s.order = Permutation(n, seed, 0)
	return s
}

// Permutation returns the order of epoch for a dataset of n examples.
func Permutation(n int, seed uint64, epoch int) []int {
	r := rand.New(rand.NewPCG(seed, uint64(epoch)^0x9e3779b97f4a7c15))
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := int(r.Uint64N(uint64(i + 1)))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// Position returns the current position.
func (s *Sampler) Position() Position { return s.pos }

// Seek moves to p (as restored from a checkpoint).
func (s *Sampler) Seek(p Position) error {
	if p.Epoch < 0 || p.Offset < 0 || p.Offset > s.n {
		return fmt.Errorf("sampler position %+v out of range for %d examples", p, s.n)
	}
	if p.Epoch != s.pos.Epoch {
		s.order = Permutation(s.n, s.seed, p.Epoch)
	}
	s.pos = p
	return nil
}

// Next appends up to batch indices of the current epoch to dst and advances.
// A batch never spans two epochs: the last one of an epoch may be short.
// At the end of an epoch the sampler moves to the next one.
func (s *Sampler) Next(dst []int, batch int) []int {
	if s.pos.Offset >= s.n {
		s.Seek(Position{Epoch: s.pos.Epoch + 1})
	}
	end := min(s.pos.Offset+batch, s.n)
	dst = append(dst, s.order[s.pos.Offset:end]...)
	s.pos.Offset = end
	if end == s.n {
		s.Seek(Position{Epoch: s.pos.Epoch + 1})
	}
	return dst
}

// StepsPerEpoch is the number of batches an epoch of n examples takes.
func StepsPerEpoch(n, batch int) int { return (n + batch - 1) / batch }
