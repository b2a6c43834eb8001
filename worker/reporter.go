package worker

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/train"
	"google.golang.org/protobuf/proto"
)

// reporter sends step progress to the coordinator off the training loop:
// the loop records each step in memory and a goroutine sends the newest
// every reportEvery. Evaluations are never dropped; the final report is
// sent synchronously (final).
type reporter struct {
	a   *Agent
	job *jobspec.Job

	mu      sync.Mutex
	latest  *api.ReportProgressRequest // newest step not yet sent
	last    *api.ReportProgressRequest // newest step recorded
	pending []*api.ReportProgressRequest
	wake    chan struct{}

	// The speed window: samples and compute seconds of this generation's
	// recent steps (about the last speedWindow), reported with every step
	// so the planner sees a mean speed, not one step's (one step in a
	// second is all the coordinator keeps, and on a busy host a single
	// step can take twice its usual time).
	winGen              int64
	winSteps            int
	winSamples, winSecs float64

	// recent holds the global losses of the last train.FinalLossSteps
	// steps this rank trained: the final report's loss is their mean, the
	// summary's final loss as a one-process run defines it.
	recent []float64
}

// speedWindow is about how much compute time the reported speed averages.
const speedWindow = time.Second

// A generation's speed is reported once its window holds minSpeedSteps
// steps or minSpeedTime of compute, not counting its first step (which
// runs on cold caches and, in a worker's first generation, allocates its
// buffers): the planner may re-plan on the first speed it sees from every
// worker.
const (
	minSpeedSteps = 3
	minSpeedTime  = speedWindow / 2
)

const reportEvery = 200 * time.Millisecond

func newReporter(a *Agent, job *jobspec.Job) *reporter {
	return &reporter{a: a, job: job, wake: make(chan struct{}, 1)}
}

// step records one finished step (acc is NaN unless this rank evaluated).
func (r *reporter) step(gen int64, step int, loss float64, samples int, took time.Duration, acc float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.winGen {
		r.winGen, r.winSteps, r.winSamples, r.winSecs = gen, 0, 0, 0
	}
	if r.winSteps++; r.winSteps > 1 {
		if r.winSecs >= speedWindow.Seconds() {
			r.winSamples, r.winSecs = r.winSamples/2, r.winSecs/2
		}
		r.winSamples += float64(samples)
		r.winSecs += took.Seconds()
	}
	if r.recent = append(r.recent, loss); len(r.recent) > train.FinalLossSteps {
		r.recent = r.recent[1:]
	}
	req := &api.ReportProgressRequest{JobId: r.a.cfg.JobID, WorkerId: r.a.cfg.ID, Generation: gen, Step: int64(step), Loss: loss,
		LinkBytesPerSecond: r.a.metrics.linkRate()}
	if r.winSteps > minSpeedSteps || r.winSecs >= minSpeedTime.Seconds() {
		req.Samples, req.StepSeconds = int64(math.Round(r.winSamples)), r.winSecs
	}
	r.last = req
	if !math.IsNaN(acc) {
		req.TestAccuracy = &acc
		r.pending = append(r.pending, req)
		r.signal()
		return
	}
	r.latest = req
}

// final reports the job's end with its test-set accuracy, synchronously
// (retrying while the coordinator is unavailable, e.g. electing a leader):
// the job is complete only once this succeeds.
func (r *reporter) final(ctx context.Context, acc, loss, samplesPerSec float64) error {
	r.mu.Lock()
	req := &api.ReportProgressRequest{JobId: r.a.cfg.JobID, WorkerId: r.a.cfg.ID}
	if r.last != nil {
		req = proto.CloneOf(r.last)
	}
	if len(r.recent) > 0 {
		req.Loss = 0
		for _, l := range r.recent {
			req.Loss += l / float64(len(r.recent))
		}
	}
	r.latest = nil
	r.mu.Unlock()
	req.Done, req.TestAccuracy, req.TestLoss, req.JobSamplesPerSecond = true, &acc, loss, samplesPerSec
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if _, err = r.a.call(ctx, func(c context.Context) (any, error) { return r.a.client.ReportProgress(c, req) }); err == nil || !isUnavailable(err) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("report job completion: %w", err)
	}
	return nil
}

func (r *reporter) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *reporter) run(ctx context.Context) {
	t := time.NewTicker(reportEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		r.send(ctx)
	}
}

func (r *reporter) send(ctx context.Context) {
	r.mu.Lock()
	batch := r.pending
	r.pending = nil
	if r.latest != nil {
		batch = append([]*api.ReportProgressRequest{r.latest}, batch...)
		r.latest = nil
	}
	r.mu.Unlock()
	for _, req := range batch {
		_, err := r.a.call(ctx, func(c context.Context) (any, error) { return r.a.client.ReportProgress(c, req) })
		if err != nil && ctx.Err() == nil {
			lvl := zap.DebugLevel
			if req.TestAccuracy != nil {
				lvl = zap.WarnLevel
			}
			r.a.log.Log(lvl, "progress report refused", zap.Int64("step", req.GetStep()), zap.Error(err))
			if req.TestAccuracy != nil {
				if isUnavailable(err) { // keep an evaluation for the next try
					r.mu.Lock()
					r.pending = append(r.pending, req)
					r.mu.Unlock()
				}
			}
		}
	}
}
