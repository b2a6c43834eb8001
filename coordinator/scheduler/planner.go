// Package scheduler is loom's pure planner: from a job's needs and the live
// workers' measured speeds (and, for pipeline jobs, memory and links) it
// computes a plan — pipeline stages with their contiguous block ranges, the
// workers of each stage, each rank's integer share of the global batch in
// proportion to its speed, and the ring order. Data-parallel planning is in
// this file; pipeline partitioning in partition.go. It knows nothing of Raft or
// gRPC: it declares its own narrow input and output types, and the
// coordinator translates them to and from the wire types.
//
// Every function here is deterministic in its inputs (the order of the
// workers slice does not matter), so the coordinator may replan on any node
// and get the same answer.
package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
)

// ErrInvalidJob and ErrInvalidWorker are returned, wrapped, for inputs the
// planner refuses.
var (
	ErrInvalidJob    = errors.New("scheduler: invalid job")
	ErrInvalidWorker = errors.New("scheduler: invalid worker")
)

// Job is what the planner needs of a job.
type Job struct {
	// GlobalBatch is the samples per step summed over replicas; > 0.
	GlobalBatch int64
	// MinWorkers: plan nothing until at least this many ranks can be used.
	// 0 means 1.
	MinWorkers int
	// MaxWorkers bounds the ranks used; 0 means unbounded.
	MaxWorkers int
	// Stages is the pipeline depth; 0 means 1. More than 1 needs Model.
	Stages int
	// AutoStages picks Stages (1..min(Model.Layers, usable workers)) with
	// the smallest predicted step time; Stages is then ignored. Needs Model.
	AutoStages bool
	// Micro is the micro-batches per step (0 means the workers' default: 1
	// for one stage, else twice the stages, at most GlobalBatch): for the predicted
	// step time and for 1F1B's activations in flight (min(Micro, stages)
	// micro-batches per stage).
	Micro int
	// UniformLayers gives every pipeline stage the same number of blocks,
	// the first stages one more when Model.Layers does not divide
	// (DeepSpeed's partition_method uniform), instead of the split that
	// balances the workers' measured speeds. Which workers form which
	// stage, and the shares within a stage, are still chosen by speed; a
	// stage that does not fit its workers' memory still rules a candidate
	// out.
	UniformLayers bool
	// Model is the cost model of the job's network; required when
	// Stages > 1 or AutoStages. nil with Stages <= 1: plan data parallel
	// by speed alone, with no layer ranges and no predicted step.
	Model *ModelCost
}

// Worker is a live worker as the planner sees it.
type Worker struct {
	ID   string
	Addr string
	// Speed is the worker's measured throughput in any unit shared by all
	// workers of one call (samples/s or GFLOP/s); finite and > 0. For
	// pipeline jobs (Model != nil) it is full-model samples/s: a stage of
	// cost fraction f takes f/Speed seconds per sample.
	Speed float64
	// MemoryBytes is the memory a stage may use on the worker; 0: unknown
	// (not checked).
	MemoryBytes int64
	// LinkBytesPerSec is the worker's network bandwidth; 0: unknown
	// (communication is not costed).
	LinkBytesPerSec float64
}

// Rank is one worker's place in a plan.
type Rank struct {
	Rank       int
	WorkerID   string
	Addr       string
	BatchShare int64
	Stage      int
	// Replica is the rank's index within its stage.
	Replica int
}

// Plan is the planner's answer. Ranks are in ring order: sorted by stage,
// then replica; the ring of stage s is the ranks of that stage in order.
// The shares of each stage sum to GlobalBatch. No ranks means the job must
// wait; Reason says why.
type Plan struct {
	Stages int
	// Replicas is the number of ranks of the largest stage (every stage has
	// this many without a Model; pipeline stages may differ).
	Replicas    int
	GlobalBatch int64
	Ranks       []Rank
	Reason      string
	// Layers is each stage's block range, len == Stages (also for one
	// stage) when the job has a Model; nil without one.
	Layers []LayerRange
	// PredictedStepSeconds is the step time the cost model predicts (the
	// step model in partition.go); 0 without a Model or for an empty plan.
	PredictedStepSeconds float64
}

// normalize fills defaults and validates.
func (j Job) normalize() (Job, error) {
	if j.Stages == 0 {
		j.Stages = 1
	}
	if j.MinWorkers == 0 {
		j.MinWorkers = 1
	}
	if j.AutoStages {
		j.Stages = 1 // ignored: the planner picks
	}
	switch {
	case j.GlobalBatch <= 0:
		return j, fmt.Errorf("%w: global_batch %d must be > 0", ErrInvalidJob, j.GlobalBatch)
	case j.Stages < 0:
		return j, fmt.Errorf("%w: pipeline_stages %d must be >= 0", ErrInvalidJob, j.Stages)
	case j.MinWorkers < 0:
		return j, fmt.Errorf("%w: min_workers %d must be >= 0", ErrInvalidJob, j.MinWorkers)
	case j.MaxWorkers < 0:
		return j, fmt.Errorf("%w: max_workers %d must be >= 0", ErrInvalidJob, j.MaxWorkers)
	case j.MaxWorkers > 0 && j.MaxWorkers < j.MinWorkers:
		return j, fmt.Errorf("%w: max_workers %d < min_workers %d", ErrInvalidJob, j.MaxWorkers, j.MinWorkers)
	case j.MaxWorkers > 0 && j.MaxWorkers < j.Stages:
		return j, fmt.Errorf("%w: max_workers %d < pipeline_stages %d", ErrInvalidJob, j.MaxWorkers, j.Stages)
	case j.Micro < 0:
		return j, fmt.Errorf("%w: micro_batches %d must be >= 0", ErrInvalidJob, j.Micro)
	case j.Model == nil && j.AutoStages:
		return j, fmt.Errorf("%w: pipeline_stages auto needs the model's cost", ErrInvalidJob)
	case j.Model == nil && j.Stages > 1:
		return j, fmt.Errorf("%w: pipeline_stages %d needs the model's cost", ErrInvalidJob, j.Stages)
	}
	if j.Micro == 0 && j.Model == nil {
		j.Micro = 1
	}
	if j.Model != nil {
		if err := j.Model.validate(); err != nil {
			return j, err
		}
		if j.Stages > j.Model.Layers {
			return j, fmt.Errorf("%w: pipeline_stages %d is more than the model's %d layers", ErrInvalidJob, j.Stages, j.Model.Layers)
		}
	}
	return j, nil
}

// ValidateJob reports whether the planner accepts j.
func ValidateJob(j Job) error {
	_, err := j.normalize()
	return err
}

// Compute plans job j over workers. It uses the fastest workers, at most
// MaxWorkers.
//
// Without a Model (Stages <= 1) every worker is a data-parallel replica.
// Shares are the largest-remainder apportionment of GlobalBatch by speed,
// so each differs from the exact proportion by less than one sample and
// they sum exactly to GlobalBatch; a replica whose share would be zero is
// dropped. If fewer than MinWorkers ranks remain the plan is empty.
//
// With a Model the workers are grouped into stages and the blocks split
// into contiguous ranges to minimise the predicted step time, within each
// worker's memory; see computePipeline.
func Compute(j Job, workers []Worker) (Plan, error) {
	j, err := j.normalize()
	if err != nil {
		return Plan{}, err
	}
	ws := make([]Worker, len(workers))
	copy(ws, workers)
	seen := make(map[string]bool, len(ws))
	for _, w := range ws {
		if w.ID == "" {
			return Plan{}, fmt.Errorf("%w: empty id", ErrInvalidWorker)
		}
		if seen[w.ID] {
			return Plan{}, fmt.Errorf("%w: duplicate id %q", ErrInvalidWorker, w.ID)
		}
		seen[w.ID] = true
		if !(w.Speed > 0) || math.IsInf(w.Speed, 0) {
			return Plan{}, fmt.Errorf("%w: %q has speed %v, want finite > 0", ErrInvalidWorker, w.ID, w.Speed)
		}
		if w.MemoryBytes < 0 {
			return Plan{}, fmt.Errorf("%w: %q has memory %d, want >= 0", ErrInvalidWorker, w.ID, w.MemoryBytes)
		}
		if !(w.LinkBytesPerSec >= 0) || math.IsInf(w.LinkBytesPerSec, 0) {
			return Plan{}, fmt.Errorf("%w: %q has link %v B/s, want finite >= 0", ErrInvalidWorker, w.ID, w.LinkBytesPerSec)
		}
	}
	sort.Slice(ws, func(a, b int) bool {
		if ws[a].Speed != ws[b].Speed {
			return ws[a].Speed > ws[b].Speed
		}
		return ws[a].ID < ws[b].ID
	})
	n := len(ws)
	if j.MaxWorkers > 0 && n > j.MaxWorkers {
		n = j.MaxWorkers
	}
	if j.Model != nil {
		return computePipeline(j, ws[:n], len(ws)), nil
	}
	replicas := n / j.Stages
	if int64(replicas) > j.GlobalBatch {
		replicas = int(j.GlobalBatch)
	}
	p := Plan{Stages: j.Stages, GlobalBatch: j.GlobalBatch}
	var shares []int64
	for ; replicas > 0; replicas-- {
		shares = apportion(j.GlobalBatch, replicaSpeeds(ws, replicas, j.Stages))
		if shares[replicas-1] > 0 { // the slowest replica has the smallest share
			break
		}
	}
	need := max(j.MinWorkers, j.Stages)
	if replicas*j.Stages < need {
		p.Reason = fmt.Sprintf("waiting for workers: %d live, %d usable, need %d", len(ws), replicas*j.Stages, need)
		return p, nil
	}
	p.Replicas = replicas
	p.Ranks = make([]Rank, 0, replicas*j.Stages)
	for s := 0; s < j.Stages; s++ {
		for r := 0; r < replicas; r++ {
			w := ws[r*j.Stages+s]
			p.Ranks = append(p.Ranks, Rank{
				Rank: len(p.Ranks), WorkerID: w.ID, Addr: w.Addr,
				BatchShare: shares[r], Stage: s, Replica: r,
			})
		}
	}
	return p, nil
}

// replicaSpeeds groups the first replicas*stages workers (sorted fastest
// first) into replicas of consecutive workers; each replica runs at the
// speed of its slowest stage.
func replicaSpeeds(ws []Worker, replicas, stages int) []float64 {
	sp := make([]float64, replicas)
	for r := range sp {
		sp[r] = ws[r*stages+stages-1].Speed
	}
	return sp
}

// apportion splits total into len(weights) integers proportional to
// weights by the largest-remainder method. Ties in remainder go to the lower
// index, so for weights sorted descending the shares are non-increasing.
func apportion(total int64, weights []float64) []int64 {
	var sum float64
	for _, w := range weights {
		sum += w
	}
	out := make([]int64, len(weights))
	rem := make([]float64, len(weights))
	var given int64
	for i, w := range weights {
		q := float64(total) * (w / sum)
		f := math.Floor(q)
		out[i] = int64(f)
		rem[i] = q - f
		given += out[i]
	}
	// Rounding can make the floors overshoot by a hair on huge totals.
	for i := len(out) - 1; given > total && i >= 0; i-- {
		if out[i] > 0 {
			out[i]--
			given--
			rem[i] = 1
		}
	}
	idx := make([]int, len(weights))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(rem[b], rem[a]) })
	for k := 0; given < total; k = (k + 1) % len(idx) {
		out[idx[k]]++
		given++
	}
	return out
}

// Changed reports whether next differs from cur enough to publish a new
// generation: a different set or placement of workers, or a batch share that
// moved by more than tolerance (a fraction, e.g. 0.2) of the smaller of its
// old and new values. Against the smaller value, a share that is 25% more
// than its rank's balanced share (a step about 25% longer than needed)
// counts as a 20% change, as a share 20% less does.
//
// With one stage, ranks are matched by worker, not by position: the planner
// orders ranks by speed, so the noise of two equal workers' measured speeds
// swaps them back and forth, and a data-parallel ring gains nothing from a
// new order (a new generation costs every rank a reconnect). With pipeline
// stages the order decides which workers form a replica, and counts, as
// does a change of any stage's block range (Layers).
func Changed(cur, next Plan, tolerance float64) bool {
	if len(cur.Ranks) != len(next.Ranks) || cur.Stages != next.Stages || cur.GlobalBatch != next.GlobalBatch {
		return true
	}
	if !slices.Equal(cur.Layers, next.Layers) {
		return true
	}
	moved := func(a, b Rank) bool {
		return a.WorkerID != b.WorkerID || a.Addr != b.Addr || a.Stage != b.Stage ||
			math.Abs(float64(a.BatchShare-b.BatchShare)) > tolerance*float64(min(a.BatchShare, b.BatchShare))
	}
	if cur.Stages <= 1 {
		byWorker := make(map[string]Rank, len(cur.Ranks))
		for _, r := range cur.Ranks {
			byWorker[r.WorkerID] = r
		}
		for _, b := range next.Ranks {
			a, ok := byWorker[b.WorkerID]
			if !ok || moved(a, b) {
				return true
			}
		}
		return false
	}
	for i := range cur.Ranks {
		a, b := cur.Ranks[i], next.Ranks[i]
		if a.Replica != b.Replica || moved(a, b) {
			return true
		}
	}
	return false
}
