package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"
)

// Loop is how one run of the step loop takes part in its job: alone (the
// zero value with Lead set), or as one data-parallel rank of a plan
// generation.
type Loop struct {
	// Sync sums the gradients across ranks (nil: one worker) and Shares
	// is this rank's part of each global batch (nil: all of it).
	Sync   GradSync
	Shares *Shares
	// Pipeline, if set, makes this run one rank of a pipeline stage: Sync
	// then sums over the stage's ranks (nil: it has one) and Shares is
	// unused.
	Pipeline *Pipeline
	// World is the number of data-parallel ranks, recorded in checkpoints.
	World int
	// Lead is the one rank that evaluates during training and writes the
	// checkpoints: every rank holds the same state. (With a Pipeline the
	// first rank of every stage evaluates and writes its stage's shard.)
	Lead         bool
	Checkpointer *Checkpointer
	// Before, if set, runs before each step. It votes to end the run after
	// that step (a newer plan exists): the votes travel with the gradients,
	// so every rank sees their sum and all leave after the same step. An
	// error ends the run before the step.
	Before func() (vote bool, err error)
	// After, if set, is told of each completed step.
	After func(StepResult)
}

// writes reports whether this rank writes the checkpoints: the lead of a
// data-parallel run, the first rank of each pipeline stage.
func (l Loop) writes() bool {
	if l.Pipeline != nil {
		return l.Pipeline.Me == 0
	}
	return l.Lead
}

// StepResult is one completed step, as this rank saw it.
type StepResult struct {
	Step int
	// Epoch is the epoch the step's samples were drawn from.
	Epoch int
	// Loss is the mean loss over the whole global batch.
	Loss float64
	// LR is the learning rate of the step's update; GradNorm the global
	// norm of its mean gradient before clipping (0 without
	// optimizer.clip_norm).
	LR       float32
	GradNorm float64
	// Rows is the samples this rank computed on, Batch the samples of
	// the whole step (all ranks).
	Rows, Batch int
	StepTimes
	// TestAccuracy is the held-out accuracy when the step evaluated (the
	// lead rank, every train.eval_every steps), else NaN.
	TestAccuracy float64
	TestLoss     float64 // with TestAccuracy: the held-out loss per position
}

// StepTimes is where one step's wall time went on this rank.
type StepTimes struct {
	// Compute is the forward and backward pass, Wait the time the rank
	// then waited for the other ranks' gradient sums (the part of the
	// all-reduce that backward did not hide), Update the optimizer update
	// (with clipping), Took the whole step (without an evaluation). The
	// rest of Took is sampling, the ledger, and waiting for a checkpoint's
	// copy of the weights. Bubble is, on a pipeline stage, the time its
	// schedule waited for the neighbouring stages (not in Compute).
	Compute, Wait, Update, Took, Bubble time.Duration
}

// ErrLossNaN ends a run whose loss became NaN: every rank sees the same
// summed loss, so all of them stop.
var ErrLossNaN = errors.New("loss is NaN (lower optimizer.lr, set optimizer.clip_norm or use fp32)")

// RunSteps runs steps until the job is done, ctx is cancelled, a step fails
// (its samples go back to the sampler, so a retry uses exactly them), or
// the ranks voted to switch after the step just taken (switched). The
// evaluation and checkpoint cadence are the job config's.
func (t *Trainer) RunSteps(ctx context.Context, l Loop) (switched bool, err error) {
	evalEvery := t.job.Train.EvalEvery
	if l.Checkpointer != nil {
		l.Checkpointer.Place(l.Pipeline, t.Generation)
	}
	for !t.Done() {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		t.SwitchVote = 0
		if l.Before != nil {
			vote, err := l.Before()
			if err != nil {
				return false, err
			}
			if vote {
				t.SwitchVote = 1
			}
		}
		start := time.Now()
		var loss float64
		var err error
		if l.Pipeline != nil {
			loss, err = t.stepPipeline(ctx, l.Sync, l.Pipeline)
		} else {
			loss, err = t.StepShare(ctx, l.Sync, l.Shares)
		}
		took := time.Since(start)
		if err != nil {
			return false, err
		}
		if math.IsNaN(loss) {
			return false, fmt.Errorf("step %d: %w", t.step, ErrLossNaN)
		}
		r := StepResult{Step: t.step, Epoch: t.lastEpoch, Loss: loss, LR: t.sched.LR(t.step - 1), GradNorm: t.lastGradNorm, Rows: t.lastRows, Batch: len(t.idx),
			StepTimes: StepTimes{Compute: t.lastCompute, Wait: t.lastWait, Update: t.lastUpdate, Took: took, Bubble: t.lastBubble}, TestAccuracy: math.NaN()}
		if evalEvery > 0 && t.step%evalEvery == 0 && !t.Done() {
			switch {
			case l.Pipeline != nil:
				if r.TestAccuracy, r.TestLoss, err = t.EvaluatePipeline(ctx, l.Pipeline); err != nil {
					return false, err
				}
			case l.Lead:
				r.TestAccuracy, r.TestLoss = t.Evaluate()
			}
		}
		if l.After != nil {
			l.After(r)
		}
		// Every rank holds its stage's state: the first rank of each
		// stage writes it (a shard of the checkpoint when there are stages).
		if ck := l.Checkpointer; ck != nil && l.writes() && ck.Due(t) {
			if err := ck.Begin(ctx, t, l.World); err != nil {
				t.log.Warn("checkpoint not started", zap.Int("step", t.step), zap.Error(err))
			}
		}
		// Leave only once every rank has the newer plan: a rank whose
		// coordinator died before the plan reached it would otherwise
		// leave and wait, with nothing to train, for a plan that only the
		// next leader can send.
		if int(t.SwitchVotes+0.5) >= max(1, l.World) {
			return true, nil
		}
	}
	return false, nil
}
