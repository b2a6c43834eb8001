package plots

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// noisyLoss is a decaying loss with noise and a few spikes, 10^5 steps.
func noisyLoss() []Point {
	r := rand.New(rand.NewPCG(1, 2))
	pts := make([]Point, 100_000)
	for i := range pts {
		y := 3*math.Exp(-float64(i)/20_000) + 0.5 + 0.2*r.Float64()
		if i%25_000 == 12_345 {
			y += 5 // a spike
		}
		pts[i] = Point{X: float64(i), Y: y}
	}
	return pts
}

func TestDownsampleKeepsShape(t *testing.T) {
	pts := noisyLoss()
	for _, limit := range []int{2, 3, 10, 501, 2000} {
		got := Downsample(pts, limit)
		if len(got) > limit {
			t.Fatalf("limit %d: %d points", limit, len(got))
		}
		if got[0] != pts[0] || got[len(got)-1] != pts[len(pts)-1] {
			t.Errorf("limit %d: first/last not kept: %v … %v", limit, got[0], got[len(got)-1])
		}
		if !slices.IsSortedFunc(got, func(a, b Point) int { return int(a.X - b.X) }) {
			t.Errorf("limit %d: result is not in X order", limit)
		}
		if !slices.Equal(got, Downsample(pts, limit)) {
			t.Errorf("limit %d: not deterministic", limit)
		}
	}
	got := Downsample(pts, 2000)
	if len(got) != 2000 {
		t.Errorf("limit 2000 gives %d points, want all of them used", len(got))
	}
	// Every bucket's extremes survive: the spikes and the noise band.
	for i := 12_345; i < len(pts); i += 25_000 {
		if !slices.Contains(got, pts[i]) {
			t.Errorf("spike at step %d lost", i)
		}
	}
	lo := slices.MinFunc(pts, func(a, b Point) int { return cmpY(a, b) })
	if !slices.Contains(got, lo) {
		t.Errorf("global minimum %v lost", lo)
	}
	// In the flat tail, kept points span the noise (0.2 wide), not its mean.
	var tailMin, tailMax = math.Inf(1), math.Inf(-1)
	for _, p := range got {
		if p.X > 90_000 {
			tailMin, tailMax = min(tailMin, p.Y), max(tailMax, p.Y)
		}
	}
	if tailMax-tailMin < 0.18 {
		t.Errorf("tail band %.3f wide, want the noise's ≈0.2", tailMax-tailMin)
	}
}

func cmpY(a, b Point) int {
	switch {
	case a.Y < b.Y:
		return -1
	case a.Y > b.Y:
		return 1
	}
	return 0
}

func TestDownsampleShortAndNonFinite(t *testing.T) {
	pts := []Point{{0, 1}, {1, math.NaN()}, {2, 2}, {math.Inf(1), 3}, {4, 4}}
	got := Downsample(pts, 10)
	if want := []Point{{0, 1}, {2, 2}, {4, 4}}; !slices.Equal(got, want) {
		t.Errorf("Downsample = %v, want %v", got, want)
	}
	got[0].Y = 99
	if pts[0].Y != 1 {
		t.Error("Downsample aliases its input")
	}
	if got := Downsample(pts, 0); len(got) != 2 || got[0] != pts[0] || got[1] != pts[4] {
		t.Errorf("limit 0 = %v, want first and last", got)
	}
	if got := Downsample(nil, 10); len(got) != 0 {
		t.Errorf("Downsample(nil) = %v", got)
	}
}
