package optimizer

// LossScaler is dynamic loss scaling for fp16: the loss (hence every
// gradient) is multiplied by Scale; a step whose gradients overflow is
// skipped and the scale halves; after GrowthInterval good steps it doubles.
// All ranks must feed it the same overflow flag so they skip the same steps.
type LossScaler struct {
	Scale          float32
	GrowthInterval int
	good           int
	Skipped        int // steps skipped so far
}

// NewLossScaler starts at 2^16 and grows every 2000 good steps (PyTorch's
// GradScaler defaults).
func NewLossScaler() *LossScaler { return &LossScaler{Scale: 65536, GrowthInterval: 2000} }

// Update records whether this step's gradients overflowed and reports
// whether the optimizer step should be applied.
func (l *LossScaler) Update(overflow bool) (apply bool) {
	if overflow {
		l.Scale = max(l.Scale/2, 1)
		l.good = 0
		l.Skipped++
		return false
	}
	l.good++
	if l.good >= l.GrowthInterval && l.Scale < 1<<24 {
		l.Scale *= 2
		l.good = 0
	}
	return true
}

// ScalerState is what a checkpoint saves of a LossScaler.
type ScalerState struct {
	Scale   float32 `json:"scale"`
	Good    int     `json:"good_steps"`
	Skipped int     `json:"skipped"`
}

// State returns the scaler's state.
func (l *LossScaler) State() ScalerState {
	return ScalerState{Scale: l.Scale, Good: l.good, Skipped: l.Skipped}
}

// Restore sets the scaler's state.
func (l *LossScaler) Restore(s ScalerState) { l.Scale, l.good, l.Skipped = s.Scale, s.Good, s.Skipped }
