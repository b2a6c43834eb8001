package train

import (
	"fmt"
	"math"
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
}

// State returns the trainer's scalar state.
func (t *Trainer) State() TrainState {
	s := TrainState{Step: t.step, Sampler: t.sampler.Position(), OptSteps: t.opt.Steps()}
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
	t.step = s.Step
	t.opt.SetSteps(s.OptSteps)
	if t.scaler != nil {
		t.scaler.Restore(s.Scaler)
	}
	t.task.weightsChanged()
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

// StateWords is the length of an encoded TrainState.
const StateWords = 8

// Encode packs s as exact 32-bit words (float32 bit patterns, so a
// float32 Broadcast carries it unchanged).
func (s TrainState) Encode(dst []float32) {
	w := []uint32{uint32(s.Step), uint32(s.Sampler.Epoch), uint32(s.Sampler.Offset), uint32(s.OptSteps),
		math.Float32bits(s.Scaler.Scale), uint32(s.Scaler.Good), uint32(s.Scaler.Skipped), 0x6c6f6f6d}
	for i, v := range w {
		dst[i] = math.Float32frombits(v)
	}
}

// DecodeState unpacks a TrainState that Encode packed.
func DecodeState(src []float32) (TrainState, error) {
	w := make([]uint32, StateWords)
	for i := range w {
		w[i] = math.Float32bits(src[i])
	}
	if w[7] != 0x6c6f6f6d {
		return TrainState{}, fmt.Errorf("state header corrupt (%#x)", w[7])
	}
	s := TrainState{Step: int(w[0]), Sampler: data.Position{Epoch: int(w[1]), Offset: int(w[2])}, OptSteps: int(w[3]),
		Scaler: optimizer.ScalerState{Scale: math.Float32frombits(w[4]), Good: int(w[5]), Skipped: int(w[6])}}
	return s, nil
}
