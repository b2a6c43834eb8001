// Package train is the step loop: the model, optimizer and data of a job on
// one device, its data-parallel steps (shares, gradient sync, micro-batches,
// clipping), evaluation and checkpoint cadence, the train state and its
// resume, and the sample ledger. loom launch runs it alone; the cluster
// worker (package worker) drives the same loop inside plan generations.
package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optimizer"
	"github.com/loomtrain/loom/tensor"
)

// Progress is reported after every optimizer step.
type Progress struct {
	Step, TotalSteps int
	Epoch            int     // the epoch this step's samples came from
	Loss             float64 // mean loss of this step's samples
	Batch            int     // this step's samples
	LR               float32
	GradNorm         float64 // global norm before clipping (0 without optimizer.clip_norm)
	SamplesPerSec    float64 // since the run started
	Elapsed          time.Duration
	ETA              time.Duration
	TestAccuracy     float64 // NaN unless an evaluation ran at this step
	TestLoss         float64 // held-out loss per predicted position, when TestAccuracy is set
	// TokensPerSample is the positions a sample predicts: the context of a
	// language model (samples are windows), 1 for a classifier.
	TokensPerSample int
	StepTimes
}

// Summary describes a finished (or interrupted) run.
type Summary struct {
	Job           string  `json:"job"`
	Status        string  `json:"status"` // completed | interrupted
	Steps         int     `json:"steps"`
	Epochs        float64 `json:"epochs"`
	Samples       int64   `json:"samples"`
	FinalLoss     float64 `json:"final_loss"` // mean training loss over the last ≤FinalLossSteps steps
	TestAccuracy  float64 `json:"test_accuracy"`
	TestLoss      float64 `json:"test_loss"`
	SamplesPerSec float64 `json:"samples_per_s"`
	WallSeconds   float64 `json:"wall_s"`
	Precision     string  `json:"precision"`
	Device        string  `json:"device"`
	Workers       int     `json:"workers"`
	SkippedSteps  int     `json:"skipped_steps"`
	// TokensPerSample is the predicted positions per sample of a language
	// model (its context; 0 for a classifier). Its test accuracy is then
	// next-token accuracy on the validation split and TestLoss the mean
	// loss per token.
	TokensPerSample int     `json:"tokens_per_sample,omitempty"`
	TokensPerSec    float64 `json:"tokens_per_s,omitempty"`
	// Shares are the batch shares of the job's last plan (a launch with
	// workers), in ring order: how the planner split each global batch.
	Shares []RankShare `json:"shares,omitempty"`
	// Checkpoint is the final checkpoint's directory; CheckpointError,
	// when checkpointing is on, why there is none. CheckpointFailures
	// counts the failed checkpoint writes of the run.
	Checkpoint         string `json:"checkpoint,omitempty"`
	CheckpointError    string `json:"checkpoint_error,omitempty"`
	CheckpointFailures int    `json:"checkpoint_failures,omitempty"`
}

// RankShare is one rank's part of each global batch.
type RankShare struct {
	Worker  string `json:"worker"`
	Stage   int    `json:"stage"`
	Samples int64  `json:"samples"`
	// Blocks are the stage's transformer blocks ("0-1"), with pipeline
	// stages.
	Blocks string `json:"blocks,omitempty"`
}

// Trainer runs one job's training loop on one device. Not safe for
// concurrent use.
type Trainer struct {
	job   *jobspec.Job
	dev   device.Device
	log   *zap.Logger
	split *data.Split

	task    task
	params  []optimizer.Param
	opt     optimizer.Optimizer
	sched   optimizer.Schedule
	scaler  *optimizer.LossScaler // nil unless fp16
	sampler *data.Sampler

	// values and grads are the flat storage of every parameter (Params
	// order), owned by the task.
	values, grads []float32
	// tail holds the step's summed loss, correct count and switch votes:
	// summed across ranks as a range of their own, started first.
	tail [tailSlots]float32

	// SwitchVote is this rank's vote, sent with the step's gradients, to
	// end the generation after this step (1: it has seen a newer plan).
	// SwitchVotes is the sum over ranks of the last step's votes: every
	// rank sees the same sum, so all leave the generation at the same step,
	// the first at which every rank has voted.
	SwitchVote, SwitchVotes float32

	// Ledger, if set, receives one JSON line per completed step with the
	// samples this trainer computed on, and with a GradSync one tentative
	// line per step started (see LedgerEntry).
	Ledger io.Writer

	// Generation is the plan generation the trainer's steps run in (set
	// by the agent); ledger lines carry it.
	Generation int64

	// beforeUpdate, if set, runs before the next optimizer update (the
	// checkpointer waits there for its copy of the weights).
	beforeUpdate func() error
	// pending is a pipeline step cut short after its gradients were
	// final (see Pending); beforeCommit, if set (tests), runs before a
	// pipeline stage waits for the stage before it to apply the step.
	pending      *pendingStep
	beforeCommit func() error

	step, total int
	loaded      int           // step of the checkpoint loaded from disk (0: none)
	config      string        // the job config as checkpoints store it (YAML)
	lastRows    int           // samples this rank computed on in the last step
	lastCompute time.Duration // forward+backward time of the last step
	lastWait    time.Duration // time the last step waited for the gradient sums
	lastUpdate  time.Duration // optimizer update time of the last step
	lastBubble  time.Duration // time the last pipeline step waited on other stages
	lastEpoch   int           // epoch the last step's samples came from
	// lastGradNorm is the global norm of the last step's mean gradient
	// before clipping (computed only with optimizer.clip_norm).
	lastGradNorm float64
	idx          []int
	msg          []float32 // a pipeline message being sent or received
}

// GradSync sums float32 ranges across data-parallel ranks. The trainer calls
// Start for disjoint ranges (of the flat gradient buffer as backward makes
// them final, then of the step's scalars) in the same order on every rank,
// then Wait once per step.
type GradSync interface {
	// Start begins summing buf[lo:hi] across ranks; it may return before
	// the sum is done. buf must not change until Wait returns.
	Start(buf []float32, lo, hi int)
	// Wait blocks until every started range is summed on this rank.
	Wait(ctx context.Context) error
}

// tailSlots are the step's summed scalars: loss, correct, votes.
const tailSlots = 3

// bucketElems is the size at which a finished range of gradients is handed
// to GradSync while backward continues (1 MiB of float32).
const bucketElems = 1 << 18

// NewTrainer builds the model (by model.kind), optimizer and sampler for
// job over split.
func NewTrainer(job *jobspec.Job, dev device.Device, split *data.Split, log *zap.Logger) (*Trainer, error) {
	return buildTrainer(job, dev, split, log, func() (task, error) { return newTask(job, dev, split) })
}

func buildTrainer(job *jobspec.Job, dev device.Device, split *data.Split, log *zap.Logger, build func() (task, error)) (*Trainer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	t := &Trainer{job: job, dev: dev, log: log, split: split}
	var err error
	if t.task, err = build(); err != nil {
		return nil, err
	}
	if n := t.task.trainSize(); job.Train.GlobalBatch > n {
		return nil, fmt.Errorf("train.global_batch %d is larger than the training set (%d examples in %s): a step cannot take more than an epoch; use at most %d",
			job.Train.GlobalBatch, n, split.Source, n)
	}
	if job.Model.Init != "" && job.Checkpoint.Resume == "" { // a resume replaces the weights
		if err := initFromDir(t); err != nil {
			return nil, err
		}
	}
	t.values, t.grads = t.task.flat()
	for _, p := range t.task.params() {
		t.params = append(t.params, optimizer.Param{Name: p.Name, Value: p.Value, Grad: p.Grad, Decay: p.Decay})
	}
	o := job.Optimizer
	t.opt, err = optimizer.New(optimizer.Config{Kind: o.Kind, WeightDecay: o.WeightDecay, Momentum: o.Momentum,
		Beta1: o.Beta1, Beta2: o.Beta2, Eps: o.Eps, Threads: dev.Threads()}, t.params)
	if err != nil {
		return nil, err
	}
	t.total = job.TotalSteps(t.task.trainSize())
	t.sched = ScheduleOf(job, t.total)
	if job.DType() == tensor.F16 {
		t.scaler = optimizer.NewLossScaler()
	}
	t.sampler = data.NewSampler(t.task.trainSize(), job.Seed)
	// Checkpoints carry the config they were trained under, with paths
	// made absolute and without the resume of the run that wrote them.
	stored := *job
	stored.Checkpoint.Resume = ""
	b, err := stored.Marshal()
	if err != nil {
		return nil, fmt.Errorf("job config: %w", err)
	}
	t.config = string(b)
	return t, nil
}

// TrainSize is the number of training samples (examples or context
// windows) in one epoch.
func (t *Trainer) TrainSize() int { return t.task.trainSize() }

// TokensPerSample is the positions one sample predicts: the context of a
// language model, 1 for a classifier.
func (t *Trainer) TokensPerSample() int { return t.task.tokensPerSample() }

// TotalSteps is the number of steps the job runs.
func (t *Trainer) TotalSteps() int { return t.total }

// Params lists the model's parameters in flat order (for tests and
// checkpoints); Value and Grad alias the trainer's live storage.
func (t *Trainer) Params() []*model.Param { return t.task.params() }

// NumParams is the number of trainable values.
func (t *Trainer) NumParams() int { return len(t.values) }

// Step runs one optimizer step on the next global batch, alone, and
// returns the mean loss of its samples.
func (t *Trainer) Step() float64 {
	loss, _ := t.StepShare(context.Background(), nil, nil)
	return loss
}

// StepShare runs one data-parallel optimizer step. Every rank draws the same
// global batch from its sampler, computes gradients on its own part of it
// (shares[rank] samples, in rank order; nil shares means the whole batch),
// sums them across ranks through sync (nil for a single worker), and applies
// the same update. It returns the mean loss over the whole global batch.
// On a sync error the step is abandoned: parameters, step count and
// sampler position are as before the call.
func (t *Trainer) StepShare(ctx context.Context, sync GradSync, shares *Shares) (float64, error) {
	startPos := t.sampler.Position()
	t.idx = t.sampler.Next(t.idx[:0], t.job.Train.GlobalBatch)
	rows := len(t.idx)
	lo, hi := 0, rows
	if shares != nil {
		lo, hi = shares.Range(rows)
	}
	if sync != nil && hi > lo {
		t.writeLedger(LedgerEntry{Epoch: startPos.Epoch, Step: t.step + 1, Gen: t.Generation, Tentative: true, Samples: t.idx[lo:hi]})
	}
	computeStart := time.Now()
	t.lastRows = hi - lo
	t.accumulate(t.idx[lo:hi], sync)
	t.lastCompute = time.Since(computeStart)
	t.lastWait, t.lastUpdate, t.lastEpoch = 0, 0, startPos.Epoch
	if sync != nil {
		waitStart := time.Now()
		err := sync.Wait(ctx)
		t.lastWait = time.Since(waitStart)
		if err != nil {
			// Abandon the step: the samples go back to the sampler so the
			// retried step uses exactly them; parameters are untouched.
			t.abandon(startPos)
			return 0, err
		}
	}
	loss := float64(t.tail[0])
	t.SwitchVotes = t.tail[2]
	scale := float32(1)
	if t.scaler != nil {
		scale = t.scaler.Scale
		// Every rank sees the same summed gradients, so all agree to skip.
		if !t.scaler.Update(!optimizer.AllFinite(t.params)) {
			t.step++
			t.record(startPos.Epoch, t.idx[lo:hi])
			return loss / float64(rows*t.task.tokensPerSample()), nil
		}
	}
	if err := t.waitCapture(); err != nil {
		t.abandon(startPos)
		return 0, err
	}
	tokens := rows * t.task.tokensPerSample()
	t.update(rows, scale)
	t.step++
	t.record(startPos.Epoch, t.idx[lo:hi])
	return loss / float64(tokens), nil
}

// LedgerEntry is one line of the sample ledger: the dataset indices a
// trainer consumed in a completed step. Across all ranks of a job, every
// index of an epoch appears exactly once among the steps that count (see
// ReconcileLedgers).
//
// A rank of a data-parallel job also writes a tentative entry when it
// starts its share of a step, before any of its gradients leave: a rank
// killed after its part reached the others but before it recorded the step
// (which they complete with its part in the sum) leaves only that entry.
type LedgerEntry struct {
	Epoch     int   `json:"epoch"`
	Step      int   `json:"step"`
	Gen       int64 `json:"gen,omitempty"`       // plan generation that ran the step (0: single process)
	Tentative bool  `json:"tentative,omitempty"` // the step was started, not (yet) completed
	// Rollback: the job went back, in generation Gen, to its checkpoint of
	// Step (a pipeline whose workers lost every copy of some layers):
	// what earlier generations trained after Step is undone.
	Rollback bool  `json:"rollback,omitempty"`
	UnixNano int64 `json:"t"` // when the entry was written
	Samples  []int `json:"samples"`
}

// RecordRollback writes the ledger line saying that the job restarted, in
// generation gen, from the checkpoint of the trainer's current step.
func (t *Trainer) RecordRollback(gen int64) {
	t.writeLedger(LedgerEntry{Epoch: t.sampler.Position().Epoch, Step: t.step, Gen: gen, Rollback: true})
}

// waitCapture waits, before an optimizer update, for a checkpoint that
// started since the last one to have copied the weights.
func (t *Trainer) waitCapture() error {
	if t.beforeUpdate != nil {
		return t.beforeUpdate()
	}
	return nil
}

// abandon rewinds the sampler to the start of the step in flight, so that
// the retried step uses exactly its samples. If another rank completed the
// step all the same (this rank's part reached it), the tentative ledger line
// accounts for the part (ReconcileLedgers).
func (t *Trainer) abandon(start data.Position) { _ = t.sampler.Seek(start) }

// record writes the ledger line of the step just completed.
func (t *Trainer) record(epoch int, idx []int) {
	t.writeLedger(LedgerEntry{Epoch: epoch, Step: t.step, Gen: t.Generation, Samples: idx})
}

func (t *Trainer) writeLedger(e LedgerEntry) {
	if t.Ledger == nil {
		return
	}
	e.UnixNano = time.Now().UnixNano()
	b, _ := json.Marshal(e)
	if _, err := t.Ledger.Write(append(b, '\n')); err != nil {
		t.log.Warn("sample ledger write failed; ledger disabled", zap.Error(err))
		t.Ledger = nil
	}
}

// accumulate runs forward and backward over the samples idx, storing their
// summed (loss-scaled) gradients in the flat gradient buffer and the summed
// loss, correct count and this rank's vote in tail. With a sync, each
// finished range of gradients (at least bucketElems, or the rest) is started
// as soon as backward has produced it, and the tail last.
func (t *Trainer) accumulate(idx []int, sync GradSync) {
	scale := float32(1)
	if t.scaler != nil {
		scale = t.scaler.Scale
	}
	t.tail = [tailSlots]float32{0, 0, t.SwitchVote}
	if sync != nil {
		// The scalars are summed as what they are, in a range of their
		// own (a few bytes behind the last bucket).
		defer sync.Start(t.tail[:], 0, tailSlots)
	}
	pendingHi := len(t.grads)
	bucket := func(lo int) {
		if pendingHi-lo >= bucketElems || lo == 0 {
			sync.Start(t.grads, lo, pendingHi)
			pendingHi = lo
		}
	}
	if len(idx) == 0 {
		// A rank with no samples this step (a short last batch) still takes
		// part in the sums, with zero gradients, in the same buckets.
		clear(t.grads)
		if sync != nil {
			for _, lo := range t.task.bucketBounds() {
				bucket(lo)
			}
		}
		return
	}
	// Micro-batches run in turn, each adding to the gradients of the ones
	// before; only the last one's backward hands finished ranges to sync.
	micro := min(t.job.Train.Micro(), len(idx))
	var loss float64
	var correct int
	for m := range micro {
		var done func(int)
		if sync != nil && m == micro-1 {
			done = bucket
		}
		l, c := t.task.accumulate(idx[m*len(idx)/micro:(m+1)*len(idx)/micro], scale, m > 0, done)
		loss += l
		correct += c
	}
	t.tail[0], t.tail[1] = float32(loss), float32(correct)
}

func grow(b []float32, n int) []float32 {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]float32, n)
}

// Evaluate returns the model's accuracy and mean loss per predicted
// position on the held-out data.
func (t *Trainer) Evaluate() (acc, loss float64) {
	acc, loss, _ = t.task.evaluate(-1)
	return acc, loss
}

// EvaluateN is Evaluate over n held-out samples spread over the held-out
// set, or every one if n is 0 (a language model's evaluation during
// training reads a bounded sample of its validation windows); it returns
// how many it read.
func (t *Trainer) EvaluateN(n int) (acc, loss float64, samples int) {
	return t.task.evaluate(max(n, 0))
}

// Run trains alone until the job's step count or until ctx is cancelled
// (then it stops at the next step boundary and reports status
// "interrupted"). onProgress, if non-nil, is called after every step. With
// a checkpointer, checkpoints are written as the job config asks, at the
// end, and when interrupted; Run returns once the last one is on disk.
func (t *Trainer) Run(ctx context.Context, ck *Checkpointer, onProgress func(Progress)) (*Summary, error) {
	start := time.Now()
	first := t.step
	var samples int64
	var recent []float64
	s := &Summary{Job: t.job.Name, Status: "completed", Precision: t.job.Train.Precision, Device: t.dev.Name(), Workers: 1}
	_, err := t.RunSteps(ctx, Loop{Lead: true, World: 1, Checkpointer: ck, After: func(r StepResult) {
		samples += int64(r.Batch)
		recent = append(recent, r.Loss)
		if len(recent) > FinalLossSteps {
			recent = recent[1:]
		}
		if onProgress == nil {
			return
		}
		el := time.Since(start)
		p := Progress{Step: r.Step, TotalSteps: t.total, Epoch: r.Epoch, Loss: r.Loss, Batch: r.Batch, LR: r.LR,
			GradNorm: r.GradNorm, SamplesPerSec: float64(samples) / el.Seconds(), Elapsed: el, TestAccuracy: r.TestAccuracy, TestLoss: r.TestLoss,
			TokensPerSample: t.task.tokensPerSample(), StepTimes: r.StepTimes}
		p.ETA = time.Duration(float64(el) / float64(r.Step-first) * float64(t.total-r.Step))
		onProgress(p)
	}})
	switch {
	case err != nil && ctx.Err() != nil:
		s.Status = "interrupted"
		if ck != nil {
			// A clean shutdown keeps the work done since the last checkpoint.
			ck.Shutdown(t, 1)
		}
	case err != nil:
		return nil, errors.Join(err, closeCheckpointer(ck))
	}
	wall := time.Since(start)
	s.Steps = t.step
	s.Samples = samples
	pos := t.sampler.Position()
	s.Epochs = float64(pos.Epoch) + float64(pos.Offset)/float64(t.task.trainSize())
	s.WallSeconds = wall.Seconds()
	if wall > 0 {
		s.SamplesPerSec = float64(samples) / wall.Seconds()
	}
	for _, l := range recent {
		s.FinalLoss += l / float64(len(recent))
	}
	if t.scaler != nil {
		s.SkippedSteps = t.scaler.Skipped
	}
	if k := t.task.tokensPerSample(); k > 1 {
		s.TokensPerSample, s.TokensPerSec = k, s.SamplesPerSec*float64(k)
	}
	s.TestAccuracy, s.TestLoss = t.Evaluate()
	if err := closeCheckpointer(ck); err != nil {
		return s, err
	}
	if s.Status == "interrupted" {
		return s, errors.Join(ErrInterrupted, ctx.Err())
	}
	return s, nil
}

func closeCheckpointer(ck *Checkpointer) error {
	if ck == nil {
		return nil
	}
	if err := ck.Close(); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// ScheduleOf is job's learning-rate schedule over total steps.
func ScheduleOf(job *jobspec.Job, total int) optimizer.Schedule {
	s := job.Schedule
	return optimizer.Schedule{Base: job.Optimizer.LR, Warmup: s.WarmupSteps, Total: total, Cosine: s.Kind == "cosine", MinRatio: s.MinLRRatio}
}

// FinalLossSteps is how many of the last steps a summary's final loss
// averages, in every path (one process, or rank 0's report with workers).
const FinalLossSteps = 50

// ErrInterrupted is returned (with a summary) when Run stopped early.
var ErrInterrupted = errors.New("training interrupted")
