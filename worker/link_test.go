package worker

import (
	"testing"
	"time"
)

// The meter reports the median of its recent large all-reduces' rates and
// ignores small ones.
func TestLinkMeter(t *testing.T) {
	var m linkMeter
	o := linkObserver{meter: &m}
	if r := m.rate(); r != 0 {
		t.Fatalf("rate before any all-reduce: %v", r)
	}
	o.ObserveAllReduce("tcp", linkMinBytes-1, time.Millisecond, 1e12) // too small to tell
	for _, r := range []float64{10e6, 30e6, 20e6, 0} {                // 0: not measured
		o.ObserveAllReduce("tcp", linkMinBytes, time.Second, r)
	}
	if r := m.rate(); r != 20e6 {
		t.Errorf("rate %v, want the median 20e6", r)
	}
	for range linkSamples {
		o.ObserveAllReduce("tcp", linkMinBytes, time.Second, 50e6)
	}
	if r := m.rate(); r != 50e6 {
		t.Errorf("rate %v after %d at 50e6, want 50e6 (older ones forgotten)", r, linkSamples)
	}
}
