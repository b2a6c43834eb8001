package scheduler

// Reshare is p with each stage's batch shares re-apportioned by speed (by
// worker id; a worker missing from speed keeps its weight of 1), every
// worker kept at its stage and layers. A pipeline whose placement stands
// (its stages hold their layers' state) can follow the measured speeds
// this way without moving any layer.
func Reshare(p Plan, speed map[string]float64) Plan {
	out := p
	out.Ranks = append([]Rank(nil), p.Ranks...)
	byStage := map[int][]int{}
	for i, r := range out.Ranks {
		byStage[r.Stage] = append(byStage[r.Stage], i)
	}
	for _, idx := range byStage {
		w := make([]float64, len(idx))
		for k, i := range idx {
			w[k] = 1
			if s := speed[out.Ranks[i].WorkerID]; s > 0 {
				w[k] = s
			}
		}
		for k, sh := range apportion(p.GlobalBatch, w) {
			out.Ranks[idx[k]].BatchShare = sh
		}
	}
	return out
}
