package worker

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/optimizer"
)

// TrainState is everything that must agree across data-parallel replicas at
// a step boundary besides the tensors: the step, the sampler position, the
// optimizer's update count and the loss scaler.
type TrainState struct {
	Step     int
	Sampler  data.Position
	OptSteps int
	Scaler   optimizer.ScalerState
	// Gens says which plan generation ran each recent step: its entries
	// are the first step each generation applied, oldest first (at most
	// genHistory of them).
	Gens []GenStart
}

// GenStart is the first step a plan generation applied.
type GenStart struct {
	Gen  int64
	Step int
}

// genHistory bounds TrainState.Gens.
const genHistory = 16

// genOf returns the generation that ran step (1-based) according to gens,
// for a trainer at step last; ok is false when gens does not reach back to
// it (entries are contiguous: each generation ran from its first step to
// the next entry's).
func genOf(gens []GenStart, step, last int) (gen int64, ok bool) {
	if step > last {
		return 0, false
	}
	for i := len(gens) - 1; i >= 0; i-- {
		if gens[i].Step <= step {
			return gens[i].Gen, true
		}
	}
	return 0, false
}

// State returns the trainer's scalar state.
func (t *Trainer) State() TrainState {
	s := TrainState{Step: t.step, Sampler: t.sampler.Position(), OptSteps: t.opt.Steps(), Gens: slices.Clone(t.gens)}
	if t.scaler != nil {
		s.Scaler = t.scaler.State()
	}
	return s
}

// Restore sets the trainer's scalar state (tensors are restored separately,
// through Tensors).
func (t *Trainer) Restore(s TrainState) error {
	if s.Step < 0 || s.Step > t.total {
		return fmt.Errorf("step %d outside [0, %d]", s.Step, t.total)
	}
	if err := t.sampler.Seek(s.Sampler); err != nil {
		return err
	}
	if p := t.pending; p != nil && p.gen != 0 {
		if g, ok := genOf(s.Gens, p.entry.Step, s.Step); ok && g == p.gen {
			// Another rank completed, in the same generation, the step
			// this one abandoned: this rank's samples were in the sum it
			// applied.
			t.writeLedger(p.entry)
		}
	}
	t.pending = nil
	t.step, t.gens = s.Step, slices.Clone(s.Gens)
	t.opt.SetSteps(s.OptSteps)
	if t.scaler != nil {
		t.scaler.Restore(s.Scaler)
	}
	t.net.WeightsChanged()
	return nil
}

// Tensors lists the trainer's state tensors, aliasing live memory: the flat
// fp32 master weights first, then the optimizer's state in its order.
func (t *Trainer) Tensors() [][]float32 {
	out := [][]float32{t.values}
	for _, s := range t.opt.State() {
		out = append(out, s.Data)
	}
	return out
}

// Done reports whether the job's last step has run.
func (t *Trainer) Done() bool { return t.step >= t.total }

// LastCompute is the forward and backward time of the last step, without
// waiting for the gradient sum: the measure of this device's speed that the
// planner balances shares by.
func (t *Trainer) LastCompute() time.Duration { return t.lastCompute }

// LastWait is how long the last step waited, after backward, for the sums
// of its gradients across ranks.
func (t *Trainer) LastWait() time.Duration { return t.lastWait }

// LastBatch is the size of the last step's global batch (the last batch of
// an epoch may be short).
func (t *Trainer) LastBatch() int { return len(t.idx) }

// Steps is the number of steps run so far.
func (t *Trainer) Steps() int { return t.step }

// metaWords is the length of an encoded TrainState.
const metaWords = 9 + 2*genHistory

// encode packs s as exact 32-bit words (float32 bit patterns, so a
// float32 Broadcast carries it unchanged).
func (s TrainState) encode(dst []float32) {
	w := []uint32{uint32(s.Step), uint32(s.Sampler.Epoch), uint32(s.Sampler.Offset), uint32(s.OptSteps),
		math.Float32bits(s.Scaler.Scale), uint32(s.Scaler.Good), uint32(s.Scaler.Skipped), 0x6c6f6f6d, uint32(len(s.Gens))}
	for _, g := range s.Gens {
		w = append(w, uint32(g.Gen), uint32(g.Step))
	}
	for i, v := range w {
		dst[i] = math.Float32frombits(v)
	}
}

func decodeState(src []float32) (TrainState, error) {
	w := make([]uint32, metaWords)
	for i := range w {
		w[i] = math.Float32bits(src[i])
	}
	if w[7] != 0x6c6f6f6d || w[8] > genHistory {
		return TrainState{}, fmt.Errorf("state header corrupt (%#x, %d)", w[7], w[8])
	}
	s := TrainState{Step: int(w[0]), Sampler: data.Position{Epoch: int(w[1]), Offset: int(w[2])}, OptSteps: int(w[3]),
		Scaler: optimizer.ScalerState{Scale: math.Float32frombits(w[4]), Good: int(w[5]), Skipped: int(w[6])}}
	for i := range int(w[8]) {
		s.Gens = append(s.Gens, GenStart{Gen: int64(w[9+2*i]), Step: int(w[10+2*i])})
	}
	return s, nil
}
