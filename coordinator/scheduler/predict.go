package scheduler

import (
	"math"
	"slices"
)

// Predict is the step time the cost model predicts for plan p, with its
// stages, layers and workers as they are, at the workers' speeds (by id;
// their shares re-apportioned by those speeds, as Reshare would): the
// figure a new plan must beat for moving layers to be worth its pause.
// It is 0 when j has no model, p has no layer ranges, or a worker of p is
// missing from workers.
func Predict(j Job, p Plan, workers []Worker) float64 {
	j, err := j.normalize()
	if err != nil || j.Model == nil || len(p.Layers) == 0 || len(p.Layers) != p.Stages {
		return 0
	}
	byID := map[string]Worker{}
	for _, w := range workers {
		byID[w.ID] = w
	}
	var pool []Worker
	stageOf := map[int][]int{}
	for _, r := range p.Ranks {
		w, ok := byID[r.WorkerID]
		if !ok || !(w.Speed > 0) {
			return 0
		}
		stageOf[r.Stage] = append(stageOf[r.Stage], len(pool))
		pool = append(pool, w)
	}
	pp := newPipeline(j)
	pp.checkMem = false // the plan runs: its layers fit
	groups := make([]*group, p.Stages)
	for s := range groups {
		idx := stageOf[s]
		if len(idx) == 0 {
			return 0
		}
		// Fastest first, as newGroup expects.
		slices.SortFunc(idx, func(a, b int) int {
			switch {
			case pool[a].Speed > pool[b].Speed:
				return -1
			case pool[a].Speed < pool[b].Speed:
				return 1
			}
			return a - b
		})
		groups[s] = pp.newGroup(pool, idx)
	}
	if _, _, ok := pp.solve(pool, groups, math.Inf(1)); !ok { // fills the tables
		return 0
	}
	counts := make([]int, p.Stages)
	for s, l := range p.Layers {
		counts[s] = l.Last - l.First
	}
	return pp.objective(counts)
}
