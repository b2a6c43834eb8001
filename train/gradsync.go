package train

import (
	"context"
	"errors"

	"github.com/loomtrain/loom/collective"
)

// RingSync is the GradSync of a data-parallel rank: a background goroutine
// all-reduces (sums) each started range over the communicator, in the order
// started, while the trainer's backward pass continues. It allocates nothing
// per step.
type RingSync struct {
	comm    *collective.Communicator
	ctx     context.Context
	cancel  context.CancelFunc
	ranges  chan []float32
	results chan error
	started int
	exited  chan struct{}
}

// maxBuckets bounds the ranges one step may start (one per layer at most).
const maxBuckets = 1024

// NewRingSync starts the all-reduce goroutine for comm. Close stops it; the
// caller still owns (and closes) comm.
func NewRingSync(comm *collective.Communicator) *RingSync {
	ctx, cancel := context.WithCancel(context.Background())
	s := &RingSync{comm: comm, ctx: ctx, cancel: cancel,
		ranges: make(chan []float32, maxBuckets), results: make(chan error, maxBuckets), exited: make(chan struct{})}
	go s.loop()
	return s
}

func (s *RingSync) loop() {
	defer close(s.exited)
	for {
		select {
		case <-s.ctx.Done():
			return
		case r := <-s.ranges:
			s.results <- s.comm.AllReduce(s.ctx, collective.F32(r))
		}
	}
}

// Start implements GradSync.
func (s *RingSync) Start(grads []float32, lo, hi int) {
	s.started++
	s.ranges <- grads[lo:hi]
}

// Wait implements GradSync: it returns once every started range is summed,
// with the first error (the communicator is then closed and the step must
// be abandoned). ctx bounds the wait.
func (s *RingSync) Wait(ctx context.Context) error {
	var first error
	for ; s.started > 0; s.started-- {
		select {
		case err := <-s.results:
			if err != nil && first == nil {
				first = err
			}
		case <-ctx.Done():
			s.comm.Close()
			return errors.Join(ctx.Err(), s.comm.Err())
		}
	}
	return first
}

// Close stops the goroutine (an all-reduce in flight is cancelled).
func (s *RingSync) Close() {
	s.cancel()
	<-s.exited
}
