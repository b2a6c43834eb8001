// Package scheduler is loom's pure planner: from a job's needs and the live
// workers' measured speeds it computes a plan — data-parallel replicas ×
// pipeline stages, each replica's integer share of the global batch in
// proportion to its speed, and the ring order. It knows nothing of Raft or
// gRPC: it declares its own narrow input and output types, and the
// coordinator translates them to and from the wire types.
//
// Every function here is deterministic in its inputs (the order of the
// workers slice does not matter), so the coordinator may replan on any node
// and get the same answer.
package scheduler

import (
	"errors"
	"fmt"
	"math"
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
	// Stages is the pipeline depth of every replica; 0 means 1.
	Stages int
}

// Worker is a live worker as the planner sees it.
type Worker struct {
	ID   string
	Addr string
	// Speed is the worker's measured throughput in any unit shared by all
	// workers of one call (samples/s or GFLOP/s); finite and > 0.
	Speed float64
}

// Rank is one worker's place in a plan.
type Rank struct {
	Rank       int
	WorkerID   string
	Addr       string
	BatchShare int64
	Stage      int
	Replica    int
}

// Plan is the planner's answer. Ranks are in ring order: sorted by stage,
// then replica; the ring of stage s is the ranks of that stage in order.
// No ranks means the job must wait; Reason says why.
type Plan struct {
	Stages      int
	Replicas    int
	GlobalBatch int64
	Ranks       []Rank
	Reason      string
}

// normalize fills defaults and validates.
func (j Job) normalize() (Job, error) {
	if j.Stages == 0 {
		j.Stages = 1
	}
	if j.MinWorkers == 0 {
		j.MinWorkers = 1
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
	}
	return j, nil
}

// ValidateJob reports whether the planner accepts j.
func ValidateJob(j Job) error {
	_, err := j.normalize()
	return err
}

// Compute plans job j over workers. It uses the fastest workers, at most
// MaxWorkers, in whole replicas of Stages ranks; a replica's speed is that
// of its slowest stage. Shares are the largest-remainder apportionment of
// GlobalBatch by replica speed, so each differs from the exact proportion by
// less than one sample and they sum exactly to GlobalBatch; a replica whose
// share would be zero is dropped. If fewer than max(MinWorkers, Stages)
// ranks remain the plan is empty.
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
	sort.SliceStable(idx, func(a, b int) bool { return rem[idx[a]] > rem[idx[b]] })
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
// stages the order decides which workers form a replica, and counts.
func Changed(cur, next Plan, tolerance float64) bool {
	if len(cur.Ranks) != len(next.Ranks) || cur.Stages != next.Stages || cur.GlobalBatch != next.GlobalBatch {
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
