package worker

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
)

// recordDrain bounds how long a stopping worker keeps retrying checkpoint
// records the coordinators have not answered.
const recordDrain = 30 * time.Second

// recorder sends checkpoint records (published checkpoints, and failed
// writes) to the coordinator, in order, from its own goroutine: the
// checkpoint writer and the training loop never wait for the coordinators.
// A record the coordinators do not answer (all down, no leader) is retried
// until they do; only recorded checkpoints are resumed from, so a complete
// checkpoint on disk is not lost to an outage.
type recorder struct {
	a      *Agent
	mu     sync.Mutex
	queue  []*api.CommitCheckpointRequest
	wake   chan struct{} // buffered 1: the queue grew
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func (a *Agent) startRecorder() *recorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &recorder{a: a, wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go r.run()
	return r
}

// published queues the record of a published checkpoint.
func (r *recorder) published(info checkpoint.Info) {
	r.push(&api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{
		JobId: r.a.cfg.JobID, Step: int64(info.Step), Path: info.Path, ManifestSha256: info.ManifestSHA256}})
}

// failed queues the report of a failed checkpoint write.
func (r *recorder) failed(step int, err error) {
	r.push(&api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: r.a.cfg.JobID, Step: int64(step)}, Failure: err.Error()})
}

func (r *recorder) push(req *api.CommitCheckpointRequest) {
	r.mu.Lock()
	r.queue = append(r.queue, req)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// pending is the number of records not yet answered.
func (r *recorder) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

// wait returns once every queued record is answered, or after d.
func (r *recorder) wait(d time.Duration) bool {
	end := time.Now().Add(d)
	for r.pending() > 0 {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// stop waits up to d for the queue to drain, then stops the goroutine,
// logging each record that was never answered.
func (r *recorder) stop(d time.Duration) {
	r.wait(d)
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, q := range r.queue {
		r.a.log.Error("checkpoint record never reached the coordinators", zap.Int64("step", q.GetCheckpoint().GetStep()),
			zap.String("path", q.GetCheckpoint().GetPath()), zap.String("failure", q.GetFailure()))
	}
}

func (r *recorder) run() {
	defer close(r.done)
	for {
		r.mu.Lock()
		var next *api.CommitCheckpointRequest
		if len(r.queue) > 0 {
			next = r.queue[0]
		}
		r.mu.Unlock()
		if next == nil {
			select {
			case <-r.ctx.Done():
				return
			case <-r.wake:
				continue
			}
		}
		if !r.send(next) {
			return // stopped while retrying
		}
		r.mu.Lock()
		r.queue = r.queue[1:]
		r.mu.Unlock()
	}
}

// send delivers one record, retrying while the coordinators are
// unavailable; false if the recorder was stopped first. A refusal (a stale
// step, an ended job) is final: it is logged and the record dropped.
func (r *recorder) send(req *api.CommitCheckpointRequest) bool {
	ck := req.GetCheckpoint()
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		_, err := r.a.call(r.ctx, func(c context.Context) (any, error) { return r.a.client.CommitCheckpoint(c, req) })
		switch {
		case err == nil && req.GetFailure() != "":
			r.a.log.Warn("checkpoint failure recorded on the job", zap.Int64("step", ck.GetStep()), zap.String("error", req.GetFailure()))
			return true
		case err == nil:
			r.a.log.Info("checkpoint recorded", zap.String("path", ck.GetPath()), zap.Int64("step", ck.GetStep()), zap.Int("attempts", attempt+1))
			return true
		case r.ctx.Err() != nil:
			return false
		case !isUnavailable(err):
			r.a.log.Warn("checkpoint record refused by the coordinator", zap.String("path", ck.GetPath()), zap.Int64("step", ck.GetStep()), zap.Error(err))
			return true
		case attempt == 0:
			r.a.log.Warn("checkpoint not recorded yet: the coordinators do not answer; retrying until they do",
				zap.String("path", ck.GetPath()), zap.Int64("step", ck.GetStep()), zap.Error(err))
		}
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
