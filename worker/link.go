package worker

import (
	"slices"
	"sync"
	"time"

	"github.com/loomtrain/loom/collective"
)

// linkMeter estimates this worker's link rate from its all-reduces: the
// rate each streamed at once every rank had started (see
// collective.Observer), for all-reduces that sent at least linkMinBytes
// (smaller ones measure latency more than rate). The rate reported is the
// median of the last linkSamples such estimates. It lives as long as the
// job's metrics: the link is the host's, whatever the plan.
type linkMeter struct {
	mu     sync.Mutex
	recent []float64 // bytes/s, oldest first
	sorted []float64 // recent, sorted: scratch
	median float64   // of recent; 0 before the first
}

const (
	linkMinBytes = 1 << 20
	linkSamples  = 7
)

func (l *linkMeter) observe(bytes int64, rate float64) {
	if bytes < linkMinBytes || !(rate > 0) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.recent = append(l.recent, rate); len(l.recent) > linkSamples {
		l.recent = l.recent[1:]
	}
	l.sorted = append(l.sorted[:0], l.recent...)
	slices.Sort(l.sorted)
	l.median = l.sorted[len(l.sorted)/2]
}

// rate is the median estimate in bytes/s, 0 before the first (read once
// a step: it allocates nothing).
func (l *linkMeter) rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.median
}

// linkObserver tells the meter and then next (if any) of every all-reduce.
type linkObserver struct {
	meter *linkMeter
	next  collective.Observer
}

func (o linkObserver) ObserveAllReduce(transport string, bytes int64, took time.Duration, rate float64) {
	o.meter.observe(bytes, rate)
	if o.next != nil {
		o.next.ObserveAllReduce(transport, bytes, took, rate)
	}
}
