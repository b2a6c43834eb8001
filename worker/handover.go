package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

// A pipeline job's generations start with a handover instead of syncState:
// a new plan may give a worker other layers than it held (a join or a loss
// re-partitions the model), so every rank announces what it holds (its
// blocks, its step and its scalar state) to every other rank over the
// world's pipe, and then each rank receives, piece by piece (embedding,
// block, head: see train.Pieces), the state of the layers the plan gives it
// from a rank that holds them at the step the job has reached: the
// furthest step any rank holds. Pieces it held itself at that step it
// keeps (or copies from the trainer it held to the one the plan needs).
// Every rank computes the same transfers from the same announcements, so
// no further message is needed to agree on them, and each pair of ranks
// sends in one order (receivers, then pieces, ascending), which is the
// order the receiver reads in.

// announceWords is the length of a handover announcement: the step (-1:
// no state), the blocks held, the newest recorded checkpoint's step (-1:
// none), whether the next step is pending (train.Trainer.Pending), and the
// scalar state.
const announceWords = 5 + train.StateWords

// errStateTorn marks a handover that failed after it began writing the
// trainer's state: a trainer that was both source and target no longer
// holds a consistent state.
var errStateTorn = errors.New("this rank's state was partly replaced")

// errLayersLost ends a pipeline job whose plan needs layers that no worker
// holds any more: no plan can continue it.
var errLayersLost = errors.New("the job lost layers")

type holding struct {
	step       int
	blocks     model.StageRange
	checkpoint int
	pending    bool
	state      train.TrainState
}

func encodeHolding(dst []float32, t *train.Trainer, hasState bool, checkpoint int) {
	step, r, pending := -1, model.StageRange{}, 0
	if t != nil && hasState {
		step, r = t.Steps(), t.Range()
		if t.Pending() {
			pending = 1
		}
		t.State().Encode(dst[5:])
	} else {
		train.TrainState{}.Encode(dst[5:])
	}
	for i, v := range []int{step, r.First, r.Last, checkpoint, pending} {
		dst[i] = math.Float32frombits(uint32(int32(v)))
	}
}

func decodeHolding(src []float32) (holding, error) {
	w := func(i int) int { return int(int32(math.Float32bits(src[i]))) }
	st, err := train.DecodeState(src[5:])
	return holding{step: w(0), blocks: model.StageRange{First: w(1), Last: w(2)}, checkpoint: w(3), pending: w(4) == 1, state: st}, err
}

// handoff is how a handover left the rank's trainer.
type handoff struct {
	// from is the world rank whose scalar state the trainer took (-1:
	// nothing moved, a fresh job or a checkpoint restored).
	from int
	// restored is the checkpoint every rank went back to ("": none).
	restored string
}

// need is the blocks the plan gives world rank r.
func (g *generation) need(r, layers int) model.StageRange {
	if g.pipeline == nil {
		return model.StageRange{First: 0, Last: layers}
	}
	for s, ranks := range g.pipeline.Stages {
		for _, pr := range ranks {
			if pr.Peer == r {
				l := g.plan.GetStageLayers()[s]
				return model.StageRange{First: int(l.GetFirst()), Last: int(l.GetLast())}
			}
		}
	}
	return model.StageRange{}
}

// handover leaves next (the trainer for the layers the plan gives this
// rank) at the job's furthest step, taking its state from held (what this
// rank trained so far, nil if nothing; it may be next itself) and from the
// other ranks. hasState says whether held has trained or loaded state.
// recorded is the job's checkpoints the coordinator recorded, by step.
//
// When no rank holds some layers at that step (every worker that held them
// is gone), every rank goes back to the newest checkpoint all of them know
// of, each loading the layers the plan gives it, and the sample ledger says
// so; without a checkpoint every rank fails alike, naming the layers.
func (g *generation) handover(ctx context.Context, held *train.Trainer, hasState bool, next *train.Trainer, layers int, recorded map[int]string) (_ handoff, err error) {
	newest := -1
	for step := range recorded {
		newest = max(newest, step)
	}
	n := len(g.plan.GetRanks())
	have := make([]holding, n)
	mine := make([]float32, announceWords)
	encodeHolding(mine, held, hasState, newest)
	for r := 0; r < n; r++ {
		if r != g.rank {
			if err := g.pipe.Send(r, mine); err != nil {
				return handoff{}, fmt.Errorf("announce state to rank %d: %w", r, err)
			}
		}
	}
	buf := make([]float32, announceWords)
	for r := 0; r < n; r++ {
		in := buf
		if r == g.rank {
			in = mine
		} else if err := g.pipe.Recv(ctx, r, buf); err != nil {
			return handoff{}, fmt.Errorf("hear state of rank %d: %w", r, err)
		}
		if have[r], err = decodeHolding(in); err != nil {
			return handoff{}, fmt.Errorf("state of rank %d: %w", r, err)
		}
	}
	best, src := -1, -1
	for r, h := range have {
		if h.step > best {
			best, src = h.step, r
		}
	}
	if best < 0 {
		return handoff{from: -1}, nil // a fresh job: every rank starts from the seed's weights
	}
	// A step cut short may have been applied by the stages before a
	// rank's and left pending on it: it applies the step too (rolls
	// forward) when some rank applied it, and forgets it otherwise.
	for r := range have {
		if h := &have[r]; h.pending && h.step+1 == best {
			h.step = best
			if r == g.rank {
				if err := held.RollForward(); err != nil {
					return handoff{}, fmt.Errorf("apply the pending step %d: %w (%w)", best, err, errStateTorn)
				}
			}
		} else if h.pending && r == g.rank {
			held.DropPending()
		}
	}
	current := func(r, p int) bool { return have[r].step == best && train.HoldsPiece(have[r].blocks, layers, p) }
	// from is the rank that sends piece p to rank r, or r itself if it
	// holds it; holders take turns by receiver, spreading the load.
	from := func(r, p int) int {
		if current(r, p) {
			return r
		}
		var cands []int
		for q := range have {
			if current(q, p) {
				cands = append(cands, q)
			}
		}
		if len(cands) == 0 {
			return -1
		}
		return cands[r%len(cands)]
	}
	var lost []string
	seen := map[int]bool{}
	for r := 0; r < n; r++ {
		for _, p := range train.Pieces(g.need(r, layers), layers) {
			if from(r, p) < 0 && !seen[p] {
				seen[p] = true
				lost = append(lost, train.PieceName(p, layers))
			}
		}
	}
	if len(lost) > 0 {
		back := best
		for _, h := range have {
			back = min(back, h.checkpoint)
		}
		path, ok := recorded[back]
		if back < 0 || !ok {
			return handoff{}, fmt.Errorf("%w: no worker holds %s at step %d, the step the job reached (every worker that held them is gone), and the job has no checkpoint to go back to",
				errLayersLost, strings.Join(lost, ", "), best)
		}
		if err := next.RestoreCheckpoint(ctx, path); err != nil {
			return handoff{}, fmt.Errorf("no worker holds %s at step %d; going back to checkpoint %s: %w (%w)", strings.Join(lost, ", "), best, path, err, errStateTorn)
		}
		next.RecordRollback(g.plan.GetGeneration())
		if err := g.pipe.Flush(ctx); err != nil {
			return handoff{}, fmt.Errorf("handover: %w", err)
		}
		return handoff{from: -1, restored: path}, nil
	}
	for r := 0; r < n; r++ {
		for _, p := range train.Pieces(g.need(r, layers), layers) {
			if s := from(r, p); s == g.rank && r != g.rank {
				ts, err := held.PieceTensors(p)
				if err != nil {
					return handoff{}, err
				}
				for _, t := range ts {
					if err := g.pipe.Send(r, t); err != nil {
						return handoff{}, fmt.Errorf("send %s to rank %d: %w", train.PieceName(p, layers), r, err)
					}
				}
			}
		}
	}
	for _, p := range train.Pieces(g.need(g.rank, layers), layers) {
		s := from(g.rank, p)
		if s == g.rank && held == next {
			continue
		}
		dst, err := next.PieceTensors(p)
		if err != nil {
			return handoff{}, err
		}
		if s == g.rank {
			ts, err := held.PieceTensors(p)
			if err != nil {
				return handoff{}, err
			}
			for i := range dst {
				copy(dst[i], ts[i])
			}
			continue
		}
		for _, d := range dst {
			if err := g.pipe.Recv(ctx, s, d); err != nil {
				return handoff{}, fmt.Errorf("receive %s from rank %d: %w (%w)", train.PieceName(p, layers), s, err, errStateTorn)
			}
		}
	}
	if held != next || have[g.rank].step != best {
		// src applied step best itself (best is the furthest step a rank
		// announced), so its scalar state is that of step best.
		if err := next.Restore(have[src].state); err != nil {
			return handoff{}, fmt.Errorf("state from rank %d: %w (%w)", src, err, errStateTorn)
		}
	}
	// The ring starts after this over links the pipe used: hand every
	// message to the links first.
	if err := g.pipe.Flush(ctx); err != nil {
		return handoff{}, fmt.Errorf("handover: %w", err)
	}
	return handoff{from: src}, nil
}
