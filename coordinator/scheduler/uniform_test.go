package scheduler

import (
	"math"
	"slices"
	"strings"
	"testing"
)

// Job.UniformLayers gives every stage the same number of blocks (the first
// stages one more), whatever the speeds; the measured split of the same
// job gives the slow worker's stage fewer blocks and a shorter step.
func TestUniformLayers(t *testing.T) {
	for _, tc := range []struct {
		layers, stages int
		want           []int
	}{
		{12, 4, []int{3, 3, 3, 3}},
		{10, 4, []int{3, 3, 2, 2}},
		{8, 3, []int{3, 3, 2}},
		{5, 2, []int{3, 2}},
	} {
		m := unitModel(tc.layers, 0.5)
		m.BoundaryBytes, m.BlockParams = 1000, 500
		ws := equalWorkers(tc.stages, 1)
		ws[1].Speed = 0.5 // like cpu:slowdown=2
		j := Job{GlobalBatch: 64, Stages: tc.stages, Model: m}
		u := j
		u.UniformLayers = true
		up := mustCompute(t, u, ws)
		if !slices.Equal(counts(up), tc.want) {
			t.Fatalf("%d blocks, %d stages, uniform: %v, want %v", tc.layers, tc.stages, counts(up), tc.want)
		}
		if got, want := up.PredictedStepSeconds, oracleStep(u, up, ws); math.Abs(got-want) > 1e-9*want {
			t.Fatalf("uniform plan predicts %v, oracle %v", got, want)
		}
		if got := Predict(u, up, ws); math.Abs(got-up.PredictedStepSeconds) > 1e-9*up.PredictedStepSeconds {
			t.Fatalf("Predict %v, the uniform plan predicted %v", got, up.PredictedStepSeconds)
		}
		// The workers' places are still the planner's: no order of them
		// on the even split beats its pick.
		perm := make([]int, tc.stages)
		for i := range perm {
			perm[i] = i
		}
		bestEqual := math.Inf(1)
		for {
			q := withLayers(up, tc.want...)
			q.Ranks = nil
			for s, wi := range perm {
				q.Ranks = append(q.Ranks, Rank{Rank: s, WorkerID: ws[wi].ID, Addr: ws[wi].Addr, BatchShare: 64, Stage: s})
			}
			bestEqual = min(bestEqual, oracleStep(j, q, ws))
			if !permute(perm) {
				break
			}
		}
		if up.PredictedStepSeconds > bestEqual*(1+1e-9) {
			t.Fatalf("%d blocks, %d stages: uniform step %v, best order of the workers on it %v", tc.layers, tc.stages, up.PredictedStepSeconds, bestEqual)
		}

		mp := mustCompute(t, j, ws)
		cs, slow := counts(mp), stageOf(mp, "w1")
		for s, c := range cs {
			if s != slow && c < cs[slow] {
				t.Fatalf("%d blocks, %d stages, measured: the slow worker's stage %d has %d blocks, stage %d %d (%v)", tc.layers, tc.stages, slow, cs[slow], s, c, cs)
			}
		}
		if cs[slow] >= tc.want[slow] && tc.want[slow] > 1 {
			t.Fatalf("%d blocks, %d stages, measured: the slow worker's stage %d has %d blocks, no fewer than uniform's %v", tc.layers, tc.stages, slow, cs[slow], tc.want)
		}
		if mp.PredictedStepSeconds >= up.PredictedStepSeconds {
			t.Fatalf("measured step %v (%v) not below uniform's %v (%v)", mp.PredictedStepSeconds, cs, up.PredictedStepSeconds, tc.want)
		}
	}
}

// With replicas, uniform still splits each stage's share of the batch by
// speed; with AutoStages every count it weighs is cut evenly.
func TestUniformLayersReplicas(t *testing.T) {
	m := unitModel(8, 0.5)
	ws := equalWorkers(4, 1)
	ws[3].Speed = 0.5
	j := Job{GlobalBatch: 60, Stages: 2, Model: m, UniformLayers: true}
	p := mustCompute(t, j, ws)
	if !slices.Equal(counts(p), []int{4, 4}) {
		t.Fatalf("uniform over 2x2: %v", counts(p))
	}
	var slowShare, mateShare int64
	for _, r := range p.Ranks {
		if r.WorkerID == "w3" {
			slowShare = r.BatchShare
		}
	}
	for _, r := range p.Ranks {
		if r.WorkerID != "w3" && r.Stage == stageOf(p, "w3") {
			mateShare = r.BatchShare
		}
	}
	if slowShare == 0 || mateShare != 2*slowShare {
		t.Fatalf("the slow worker's share %d, its stage-mate's %d: want half (%+v)", slowShare, mateShare, p.Ranks)
	}

	a := Job{GlobalBatch: 60, AutoStages: true, Model: m, UniformLayers: true}
	ap := mustCompute(t, a, ws)
	want := make([]int, ap.Stages)
	for s := range want {
		want[s] = 8 / ap.Stages
		if s < 8%ap.Stages {
			want[s]++
		}
	}
	if !slices.Equal(counts(ap), want) {
		t.Fatalf("auto, uniform: %d stages cut %v, want %v", ap.Stages, counts(ap), want)
	}
}

// A stage of the even split that does not fit its worker's memory rules
// the plan out, and the reason names it, where the measured split fits by
// moving blocks off that worker.
func TestUniformLayersMemory(t *testing.T) {
	const GiB = 1 << 30
	m := unitModel(12, 0.01)
	m.BlockParams = GiB / 16 / 8 // 1/8 GiB of state per block
	ws := equalWorkers(2, 1)
	ws[0].MemoryBytes, ws[1].MemoryBytes = 4*GiB, GiB/2 // w1 holds 4 blocks
	j := Job{GlobalBatch: 16, Stages: 2, Micro: 4, Model: m}
	if p := mustCompute(t, j, ws); counts(p)[stageOf(p, "w1")] != 4 {
		t.Fatalf("measured: the short worker has %v", counts(p))
	}
	j.UniformLayers = true
	p, err := Compute(j, ws)
	if err != nil || len(p.Ranks) != 0 {
		t.Fatalf("uniform 6+6 on a worker that holds 4: %+v, %v", p, err)
	}
	if !strings.Contains(p.Reason, "(blocks ") || !strings.Contains(p.Reason, "on worker w1, which has 0.50 GiB") {
		t.Fatalf("reason %q does not name the stage and worker", p.Reason)
	}
}
