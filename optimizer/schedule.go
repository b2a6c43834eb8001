package optimizer

import "math"

// Schedule gives the learning rate of each step: linear warmup from 0 to
// Base over Warmup steps, then constant or a cosine decay to Base·MinRatio
// at Total steps.
type Schedule struct {
	Base     float64
	Warmup   int
	Total    int
	Cosine   bool
	MinRatio float64
}

// LR returns the learning rate for step (0-based).
func (s Schedule) LR(step int) float32 {
	if s.Warmup > 0 && step < s.Warmup {
		return float32(s.Base * float64(step+1) / float64(s.Warmup))
	}
	if !s.Cosine || s.Total <= s.Warmup {
		return float32(s.Base)
	}
	progress := math.Min(1, float64(step-s.Warmup)/float64(s.Total-s.Warmup))
	cos := 0.5 * (1 + math.Cos(math.Pi*progress))
	return float32(s.Base * (s.MinRatio + (1-s.MinRatio)*cos))
}
