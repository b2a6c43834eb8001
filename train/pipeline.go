package train

import (
	"context"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optimizer"
	"github.com/loomtrain/loom/tensor"
)

// Pipe is what a pipeline stage needs of its links to the ranks of the
// neighbouring stages (collective.Pipe): Send queues a message and never
// waits for the network; Recv blocks until the next message from a peer has
// been read into dst, whose length must be the message's. Messages between
// two ranks arrive in the order sent.
type Pipe interface {
	Send(to int, data []float32) error
	Recv(ctx context.Context, from int, dst []float32) error
}

// PipeRank is one rank of a pipeline stage: its peer number on the Pipe and
// its batch share, the weight of its part of every micro-batch.
type PipeRank struct {
	Peer  int
	Share int
}

// Pipeline is this rank's place in a pipeline-parallel plan generation:
// the stages, each a data-parallel group of ranks over a contiguous range of
// the model's layers (the trainer holds this rank's), and the links between
// neighbouring stages.
//
// Every rank draws the same global batch and splits it into micro-batches;
// each stage splits every micro-batch among its own ranks by their shares,
// so ranks of one stage may differ in speed and stages may differ in rank
// count. A rank sends the rows of its output that a next-stage rank holds
// to that rank, and their gradients come back the same way.
type Pipeline struct {
	Stages    [][]PipeRank // Stages[s] is stage s's ranks in ring order
	Stage, Me int          // this rank is Stages[Stage][Me]
	Pipe      Pipe
	// Micro is the micro-batches per step; 0 means the job's
	// train.micro_batches.
	Micro int
	// GPipe runs every micro-batch's forward before any backward (holding
	// all their activations) instead of 1F1B's one forward, one backward.
	GPipe bool
}

// World is the number of ranks over all stages.
func (p *Pipeline) World() int {
	n := 0
	for _, s := range p.Stages {
		n += len(s)
	}
	return n
}

// Validate reports whether p describes a usable place for a trainer whose
// stage holds r of a model with layers blocks.
func (p *Pipeline) validate(r model.StageRange) error {
	switch {
	case p == nil:
		return nil
	case len(p.Stages) == 0 || p.Stage < 0 || p.Stage >= len(p.Stages):
		return fmt.Errorf("pipeline: stage %d of %d", p.Stage, len(p.Stages))
	case p.Me < 0 || p.Me >= len(p.Stages[p.Stage]):
		return fmt.Errorf("pipeline: rank %d of stage %d's %d", p.Me, p.Stage, len(p.Stages[p.Stage]))
	case p.Pipe == nil && len(p.Stages) > 1:
		return fmt.Errorf("pipeline: no links between the stages")
	case (p.Stage == 0) != (r.First == 0):
		return fmt.Errorf("pipeline: stage %d holds blocks [%d, %d): only stage 0 holds the embedding", p.Stage, r.First, r.Last)
	}
	for s, ranks := range p.Stages {
		if len(ranks) == 0 {
			return fmt.Errorf("pipeline: stage %d has no ranks", s)
		}
		for _, pr := range ranks {
			if pr.Share < 0 {
				return fmt.Errorf("pipeline: stage %d: negative share %d", s, pr.Share)
			}
		}
	}
	return nil
}

// stageTask is a task whose model is one pipeline stage (the GPT): it
// runs micro-batches' forwards and backwards separately, with their
// activations held in slots, and takes and gives the activations and
// gradients at its ends.
type stageTask interface {
	task
	// stage is the blocks the task holds and whether it has the
	// embedding (first) and head (last).
	stage() (r model.StageRange, first, last bool)
	// width is the floats one sample carries across a stage boundary.
	width() int
	// zeroGrad clears the gradients before a step's first backward.
	zeroGrad()
	// inbox is where the stage's input for rows samples is received
	// (activations, or the gradient of the output), valid until the next
	// forward or backward that reads it.
	inbox(rows int) []float32
	// forwardSlot runs slot's forward on the samples idx: the first stage
	// reads their tokens, others the activations in inbox. On the last
	// stage it also computes the loss (scaled by scale) and returns its
	// sum; otherwise it returns the output activations (rows·width,
	// valid until the slot's next forward).
	forwardSlot(slot int, idx []int, scale float32) (out []float32, loss float64)
	// backwardSlot back-propagates slot's rows samples (the gradient of
	// its output in inbox, except on the last stage) and returns the
	// gradient of its input (nil on the first stage); done is as in
	// task.accumulate.
	backwardSlot(slot, rows int, done func(lo int)) []float32
	// evalSlot is forwardSlot on validation windows, without keeping
	// anything for backward: on the last stage it returns the next-token
	// hits and summed loss instead of activations.
	evalSlot(idx []int) (out []float32, hits int, loss float64)
}

// pipeOp is one micro-batch's forward or backward in a stage's schedule.
type pipeOp struct {
	micro    int
	backward bool
}

// schedule is the order of a stage's operations over m micro-batches and
// the activation slots it needs: 1F1B warms up with one forward per later
// stage, then alternates one forward and one backward, then drains; GPipe
// runs every forward, then every backward.
func schedule(stages, stage, m int, gpipe bool) (ops []pipeOp, slots int) {
	if gpipe {
		for k := range m {
			ops = append(ops, pipeOp{micro: k})
		}
		for k := range m {
			ops = append(ops, pipeOp{micro: k, backward: true})
		}
		return ops, m
	}
	warm := min(stages-stage-1, m)
	for k := range warm {
		ops = append(ops, pipeOp{micro: k})
	}
	for i := range m - warm {
		ops = append(ops, pipeOp{micro: warm + i}, pipeOp{micro: i, backward: true})
	}
	for k := m - warm; k < m; k++ {
		ops = append(ops, pipeOp{micro: k, backward: true})
	}
	return ops, min(warm+1, m)
}

// pipeRows is how one step's rows lie over the stages' ranks: micro-batch
// k is rows [micro[k], micro[k+1]) of the step's samples, and rank i of
// stage s holds rows [at[s][k][i], at[s][k][i+1]) of it.
type pipeRows struct {
	micro []int
	at    [][][]int
}

// layoutRows lays rows of a step in m micro-batches over p's stages.
// A stage's rows go to its ranks one at a time, each to the rank furthest
// below its share of the rows dealt so far (w_i·(r+1)/W − c_i, ties to the
// lower rank): over the step each rank gets its share exactly (when the
// shares sum to the rows), spread over the micro-batches. Rounding each
// micro-batch on its own instead gives a rank whose share is small beside
// a micro-batch's rows none at all, every time.
func layoutRows(p *Pipeline, rows, m int) pipeRows {
	l := pipeRows{micro: make([]int, m+1), at: make([][][]int, len(p.Stages))}
	for k := 0; k <= m; k++ {
		l.micro[k] = k * rows / m
	}
	for s, ranks := range p.Stages {
		w := make([]int, len(ranks))
		total := 0
		for i, r := range ranks {
			w[i] = r.Share
			total += r.Share
		}
		if total == 0 { // cannot happen for a plan's ranks; the first takes all
			w[0], total = 1, 1
		}
		dealt := make([]int, len(ranks))
		l.at[s] = make([][]int, m)
		row := 0
		for k := range m {
			at := make([]int, len(ranks)+1)
			for ; row < l.micro[k+1]; row++ {
				best, bestDef := 0, 0
				for i := range ranks {
					// w_i·(row+1)/W − dealt_i, times W to stay in integers.
					if def := w[i]*(row+1) - dealt[i]*total; i == 0 || def > bestDef {
						best, bestDef = i, def
					}
				}
				dealt[best]++
				at[best+1]++
			}
			at[0] = l.micro[k]
			for i := range ranks {
				at[i+1] += at[i]
			}
			l.at[s][k] = at
		}
	}
	return l
}

// overlap is the rows rank i of stage s and rank j of stage s2 both hold
// in micro-batch k (hi <= lo: none).
func (l pipeRows) overlap(s, i, s2, j, k int) (lo, hi int) {
	a, b := l.at[s][k], l.at[s2][k]
	return max(a[i], b[j]), min(a[i+1], b[j+1])
}

// pipeTail is what the last stage sends back down the pipeline after a
// step: the summed loss and correct count, and whether every rank voted to
// switch (1) or not (0).
const pipeTail = 3

// stepPipeline is StepShare for a rank of a pipeline stage: it runs the
// stage's schedule over the step's micro-batches, sums the stage's
// gradients over its ranks through sync (nil: the stage has one rank) while
// the last backwards run, and passes the step's loss and switch votes from
// the last stage back to every rank.
//
// Votes travel forward with the activations: each message carries the
// lowest vote its sender has seen (its own and every message it received),
// so the last stage's ranks, which every row passes, see whether all ranks
// voted; the sum over them says whether all of them saw only yes.
func (t *Trainer) stepPipeline(ctx context.Context, sync GradSync, p *Pipeline) (float64, error) {
	st := t.task.(stageTask)
	t.pending = nil
	startPos := t.sampler.Position()
	t.idx = t.sampler.Next(t.idx[:0], t.job.Train.GlobalBatch)
	rows := len(t.idx)
	m := p.Micro
	if m <= 0 {
		m = t.job.Train.Micro()
	}
	m = min(m, rows)
	l := layoutRows(p, rows, m)
	S, s, me := len(p.Stages), p.Stage, p.Me
	_, first, last := st.stage()
	width := st.width()

	var mine []int // this rank's samples, micro-batch order
	lastBackward := -1
	for k := range m {
		at := l.at[s][k]
		mine = append(mine, t.idx[at[me]:at[me+1]]...)
		if at[me+1] > at[me] {
			lastBackward = k
		}
	}
	if first && len(mine) > 0 {
		t.writeLedger(LedgerEntry{Epoch: startPos.Epoch, Step: t.step + 1, Gen: t.Generation, Tentative: true, Samples: mine})
	}
	fail := func(err error) (float64, error) {
		t.abandon(startPos)
		return 0, err
	}
	const scale = 1 // fp16 loss scaling is refused with pipeline stages
	ops, slots := schedule(S, s, m, p.GPipe)

	computeStart := time.Now()
	var waited time.Duration
	recv := func(from int, dst []float32) error {
		w := time.Now()
		err := p.Pipe.Recv(ctx, from, dst)
		waited += time.Since(w)
		return err
	}
	vote := t.SwitchVote
	var loss float64
	pendingHi := len(t.grads)
	bucket := func(lo int) {
		if pendingHi-lo >= bucketElems || lo == 0 {
			sync.Start(t.grads, lo, pendingHi)
			pendingHi = lo
		}
	}
	if len(mine) == 0 {
		clear(t.grads)
	} else {
		st.zeroGrad()
	}
	for _, op := range ops {
		k := op.micro
		at := l.at[s][k]
		lo, hi := at[me], at[me+1]
		n := hi - lo
		if n == 0 {
			continue
		}
		slot := k % slots
		if !op.backward {
			if !first {
				in := st.inbox(n)
				for j := range p.Stages[s-1] {
					a, b := l.overlap(s-1, j, s, me, k)
					if b <= a {
						continue
					}
					// Each message ends with its sender's vote (see above).
					t.msg = grow(t.msg, (b-a)*width+1)
					if err := recv(p.Stages[s-1][j].Peer, t.msg); err != nil {
						return fail(fmt.Errorf("stage %d: activations of micro-batch %d from stage %d rank %d: %w", s, k, s-1, j, err))
					}
					copy(in[(a-lo)*width:(b-lo)*width], t.msg)
					vote = min(vote, t.msg[len(t.msg)-1])
				}
			}
			out, ls := st.forwardSlot(slot, t.idx[lo:hi], scale)
			loss += ls
			if !last {
				for j := range p.Stages[s+1] {
					a, b := l.overlap(s, me, s+1, j, k)
					if b <= a {
						continue
					}
					t.msg = grow(t.msg, (b-a)*width+1)
					copy(t.msg, out[(a-lo)*width:(b-lo)*width])
					t.msg[len(t.msg)-1] = vote
					if err := p.Pipe.Send(p.Stages[s+1][j].Peer, t.msg); err != nil {
						return fail(fmt.Errorf("stage %d: activations of micro-batch %d to stage %d rank %d: %w", s, k, s+1, j, err))
					}
				}
			}
			continue
		}
		if !last {
			in := st.inbox(n)
			for j := range p.Stages[s+1] {
				a, b := l.overlap(s, me, s+1, j, k)
				if b <= a {
					continue
				}
				if err := recv(p.Stages[s+1][j].Peer, in[(a-lo)*width:(b-lo)*width]); err != nil {
					return fail(fmt.Errorf("stage %d: gradients of micro-batch %d from stage %d rank %d: %w", s, k, s+1, j, err))
				}
			}
		}
		var done func(int)
		if sync != nil && k == lastBackward {
			done = bucket
		}
		din := st.backwardSlot(slot, n, done)
		if !first {
			for j := range p.Stages[s-1] {
				a, b := l.overlap(s-1, j, s, me, k)
				if b <= a {
					continue
				}
				if err := p.Pipe.Send(p.Stages[s-1][j].Peer, din[(a-lo)*width:(b-lo)*width]); err != nil {
					return fail(fmt.Errorf("stage %d: gradients of micro-batch %d to stage %d rank %d: %w", s, k, s-1, j, err))
				}
			}
		}
	}
	t.lastCompute = time.Since(computeStart) - waited
	t.lastBubble = waited
	t.lastRows = len(mine)
	t.lastWait, t.lastUpdate, t.lastEpoch = 0, 0, startPos.Epoch
	t.tail = [tailSlots]float32{float32(loss), 0, vote}
	if sync != nil {
		if len(mine) == 0 {
			for _, lo := range t.task.bucketBounds() {
				bucket(lo)
			}
		}
		sync.Start(t.tail[:], 0, tailSlots)
		waitStart := time.Now()
		err := sync.Wait(ctx)
		t.lastWait = time.Since(waitStart)
		if err != nil {
			return fail(err)
		}
	}
	// The stage's gradients are final: a failure from here on leaves the
	// step pending (see RollForward), as the stages before it may apply it.
	pend := func(err error) (float64, error) {
		next := t.sampler.Position()
		t.abandon(startPos)
		t.pending = &pendingStep{rows: rows, next: next}
		return 0, err
	}
	// The step's loss and the verdict on the votes come back from the
	// last stage: rank i of stage s hears from rank i mod |s+1| of stage
	// s+1 and tells the ranks of stage s-1 that hear from it.
	var res [pipeTail]float32
	if last {
		res[0], res[1] = t.tail[0], t.tail[1]
		if t.tail[2] > float32(len(p.Stages[s]))-0.5 {
			res[2] = 1
		}
	} else if err := recv(p.Stages[s+1][me%len(p.Stages[s+1])].Peer, res[:]); err != nil {
		return pend(fmt.Errorf("stage %d: step result from stage %d: %w", s, s+1, err))
	}
	if !first {
		for i := range p.Stages[s-1] {
			if i%len(p.Stages[s]) == me {
				if err := p.Pipe.Send(p.Stages[s-1][i].Peer, res[:]); err != nil {
					return pend(fmt.Errorf("stage %d: step result to stage %d rank %d: %w", s, s-1, i, err))
				}
			}
		}
		// The stages apply the step in order, the first stage first (it
		// is the last to have everything): a stage applies it once the
		// stage before it has, so a step cut short leaves no stage ahead
		// of the first, and those behind it hold the step pending.
		var ack [1]float32
		if t.beforeCommit != nil {
			if err := t.beforeCommit(); err != nil {
				return pend(err)
			}
		}
		if err := recv(p.Stages[s-1][me%len(p.Stages[s-1])].Peer, ack[:]); err != nil {
			return pend(fmt.Errorf("stage %d: step commit from stage %d: %w", s, s-1, err))
		}
	}
	t.SwitchVotes = res[2] * float32(p.World())
	tokens := rows * t.task.tokensPerSample()
	if err := t.waitCapture(); err != nil {
		return pend(err)
	}
	t.update(rows, 1)
	t.step++
	if !last {
		for j := range p.Stages[s+1] {
			if j%len(p.Stages[s]) == me {
				if err := p.Pipe.Send(p.Stages[s+1][j].Peer, commitMsg[:]); err != nil {
					// Applied here; the stages after it hold it pending.
					return 0, fmt.Errorf("stage %d: step commit to stage %d rank %d: %w", s, s+1, j, err)
				}
			}
		}
	}
	if first {
		t.record(startPos.Epoch, mine)
	}
	return float64(res[0]) / float64(tokens), nil
}

// commitMsg is the one-float message a stage sends the next once it has
// applied a step (Pipe.Send copies it: it is never written).
var commitMsg = [1]float32{1}

// pendingStep is a pipeline step whose gradients were final on this rank
// but which it did not apply (the step was cut short after them): rows is
// its batch, next the sampler position after it.
type pendingStep struct {
	rows int
	next data.Position
}

// Pending reports whether the trainer holds the step after its last one
// pending: its gradients summed over its stage, not applied because the
// step was cut short after them. Some other stage may have applied it.
func (t *Trainer) Pending() bool { return t.pending != nil }

// RollForward applies the pending step (see Pending): what a stage does
// when the job's plan finds that the stage before it applied that step.
func (t *Trainer) RollForward() error {
	p := t.pending
	if p == nil {
		return fmt.Errorf("no step pending after step %d", t.step)
	}
	if err := t.waitCapture(); err != nil {
		return err
	}
	t.pending = nil
	if err := t.sampler.Seek(p.next); err != nil {
		return err
	}
	t.update(p.rows, 1)
	t.step++
	return nil
}

// DropPending forgets the pending step: the stages that applied it are
// gone, and the step will be trained again.
func (t *Trainer) DropPending() { t.pending = nil }

// update applies the optimizer step to the summed gradients of rows
// samples, computed under loss scale scale.
func (t *Trainer) update(rows int, scale float32) {
	updateStart := time.Now()
	gradScale := 1 / (float32(rows*t.task.tokensPerSample()) * scale)
	if clip := t.job.Optimizer.ClipNorm; clip > 0 {
		t.lastGradNorm = optimizer.GlobalNorm(t.params) * float64(gradScale)
		gradScale *= float32(optimizer.ClipCoef(t.lastGradNorm, clip))
	}
	t.opt.Step(t.params, t.sched.LR(t.step), gradScale)
	t.task.weightsChanged()
	t.lastUpdate = time.Since(updateStart)
}

// NewStageTrainer is NewTrainer for one rank of pipeline p whose stage
// holds blocks layers of the job's GPT: its parameters, gradients and
// optimizer state are those of the stage alone, with activation slots for
// the micro-batches its schedule keeps in flight. Every rank of a
// pipeline draws the same samples (the seed's), so the stages agree on
// each step's batch.
func NewStageTrainer(job *jobspec.Job, dev device.Device, split *data.Split, log *zap.Logger, layers model.StageRange, p *Pipeline) (*Trainer, error) {
	if job.Model.Kind != "gpt" {
		return nil, fmt.Errorf("pipeline stages need model.kind gpt, not %q", job.Model.Kind)
	}
	if job.DType() == tensor.F16 {
		return nil, fmt.Errorf("train.precision fp16 with pipeline stages: each stage would skip overflowing steps on its own; use bf16 or fp32")
	}
	if err := p.validate(layers); err != nil {
		return nil, err
	}
	m := p.Micro
	if m <= 0 {
		m = job.Train.Micro()
	}
	_, slots := schedule(len(p.Stages), p.Stage, m, p.GPipe)
	return buildTrainer(job, dev, split, log, func() (task, error) {
		return newGPTStage(job, dev, split, layers, slots, m)
	})
}

// EvaluatePipeline is Evaluate across the stages of p: the first rank of
// every stage takes part (the others return NaN at once). The first stage
// reads the held-out windows Evaluate reads, each stage runs their
// forward in turn, and the last stage's accuracy and loss come back down.
func (t *Trainer) EvaluatePipeline(ctx context.Context, p *Pipeline) (acc, loss float64, err error) {
	if p.Me != 0 {
		return math.NaN(), math.NaN(), nil
	}
	g := t.task.(*gptTask)
	_, first, last := g.stage()
	s := p.Stage
	set := g.text.Validation
	windows := evalWindows(set.N, g.ctx, -1)
	batch := len(g.hostIn) / g.ctx
	width := g.width()
	var idx []int
	var hits int
	var sum float64
	for lo := 0; lo < windows; lo += batch {
		idx = evalBatch(idx, lo, min(lo+batch, windows), set.N, windows)
		if !first {
			if err := p.Pipe.Recv(ctx, p.Stages[s-1][0].Peer, g.inbox(len(idx))); err != nil {
				return 0, 0, fmt.Errorf("stage %d: evaluation activations from stage %d: %w", s, s-1, err)
			}
		}
		out, h, l := g.evalSlot(idx)
		hits += h
		sum += l
		if !last {
			if err := p.Pipe.Send(p.Stages[s+1][0].Peer, out[:len(idx)*width]); err != nil {
				return 0, 0, fmt.Errorf("stage %d: evaluation activations to stage %d: %w", s, s+1, err)
			}
		}
	}
	tokens := float64(windows * g.ctx)
	res := []float32{float32(float64(hits) / tokens), float32(sum / tokens)}
	if !last {
		if err := p.Pipe.Recv(ctx, p.Stages[s+1][0].Peer, res); err != nil {
			return 0, 0, fmt.Errorf("stage %d: evaluation result from stage %d: %w", s, s+1, err)
		}
	}
	if !first {
		if err := p.Pipe.Send(p.Stages[s-1][0].Peer, res); err != nil {
			return 0, 0, fmt.Errorf("stage %d: evaluation result to stage %d: %w", s, s-1, err)
		}
	}
	return float64(res[0]), float64(res[1]), nil
}
