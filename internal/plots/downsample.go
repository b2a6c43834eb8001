package plots

// Downsample returns at most limit points of pts (in X order) that draw the
// same picture: points with a non-finite coordinate are dropped, and when
// more than limit remain, the first and the last are kept and the ones
// between are split into (limit-2)/2 equal runs by index, of which the lowest
// and the highest point are kept, in their original order. A limit below 2 is
// taken as 2. The result is a new slice and depends only on its arguments.
//
// Why min/max buckets rather than LTTB: a loss curve is noisy, and what a
// chart of it shows is the band the noise spans at each pixel column plus
// its spikes. Keeping each bucket's extremes reproduces that band and every
// spike exactly (with limit ≈ 2 × width, one bucket per column), where LTTB
// keeps one point per bucket, chosen for the area it spans with its
// neighbours, so the band thins to a line and a spike may be lost. It is
// also a single O(n) pass with no floating-point choice between ties.
func Downsample(pts []Point, limit int) []Point {
	limit = max(limit, 2)
	clean := make([]Point, 0, len(pts))
	for _, pt := range pts {
		if finite(pt) {
			clean = append(clean, pt)
		}
	}
	if len(clean) <= limit {
		return clean
	}
	inner := clean[1 : len(clean)-1]
	buckets := (limit - 2) / 2
	out := make([]Point, 0, 2+2*buckets)
	out = append(out, clean[0])
	for b := range buckets {
		run := inner[b*len(inner)/buckets : (b+1)*len(inner)/buckets]
		lo, hi := 0, 0
		for i, pt := range run {
			if pt.Y < run[lo].Y {
				lo = i
			}
			if pt.Y > run[hi].Y {
				hi = i
			}
		}
		switch {
		case lo == hi:
			out = append(out, run[lo])
		case lo < hi:
			out = append(out, run[lo], run[hi])
		default:
			out = append(out, run[hi], run[lo])
		}
	}
	return append(out, clean[len(clean)-1])
}
