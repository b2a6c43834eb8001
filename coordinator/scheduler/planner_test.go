package scheduler

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"testing"

	"pgregory.net/rapid"
)

func genWorkers(t *rapid.T) []Worker {
	n := rapid.IntRange(0, 40).Draw(t, "n")
	ws := make([]Worker, n)
	for i := range ws {
		ws[i] = Worker{
			ID:    fmt.Sprintf("w%02d", i),
			Addr:  fmt.Sprintf("127.0.0.1:%d", 7000+i),
			Speed: rapid.Float64Range(0.01, 1000).Draw(t, "speed"),
		}
	}
	return ws
}

// genJob draws a data-parallel job (no Model, so Stages <= 1); pipeline
// jobs are drawn in partition_test.go.
func genJob(t *rapid.T) Job {
	j := Job{
		GlobalBatch: rapid.Int64Range(1, 100000).Draw(t, "batch"),
		Stages:      rapid.IntRange(0, 1).Draw(t, "stages"),
		MinWorkers:  rapid.IntRange(0, 10).Draw(t, "min"),
	}
	if rapid.Bool().Draw(t, "bounded") {
		j.MaxWorkers = rapid.IntRange(max(j.MinWorkers, j.Stages, 1), 30).Draw(t, "max")
	}
	return j
}

// TestPlanProperties checks every contract of Compute on random jobs and
// worker sets.
func TestPlanProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		j, ws := genJob(t), genWorkers(t)
		p, err := Compute(j, ws)
		if err != nil {
			t.Fatalf("Compute: %v", err)
		}
		stages := max(j.Stages, 1)
		if p.Stages != stages || p.GlobalBatch != j.GlobalBatch {
			t.Fatalf("plan header %+v for job %+v", p, j)
		}
		byID := map[string]Worker{}
		for _, w := range ws {
			byID[w.ID] = w
		}
		need := max(j.MinWorkers, stages, 1)
		if len(p.Ranks) == 0 {
			if p.Reason == "" {
				t.Fatalf("empty plan without a reason")
			}
			// Empty only if there really are not enough usable workers.
			usable := len(ws)
			if j.MaxWorkers > 0 {
				usable = min(usable, j.MaxWorkers)
			}
			if usable/stages*stages >= need {
				// Enough workers: emptiness must come from the batch being
				// too small to give the fewest allowed replicas a sample each.
				rmin := (need + stages - 1) / stages
				if int64(rmin) <= j.GlobalBatch {
					sorted := append([]Worker(nil), ws...)
					sort.Slice(sorted, func(a, b int) bool {
						if sorted[a].Speed != sorted[b].Speed {
							return sorted[a].Speed > sorted[b].Speed
						}
						return sorted[a].ID < sorted[b].ID
					})
					shares := apportion(j.GlobalBatch, replicaSpeeds(sorted, rmin, stages))
					if shares[rmin-1] > 0 {
						t.Fatalf("empty plan with %d usable workers, need %d: %s", usable, need, p.Reason)
					}
				}
			}
			return
		}
		if len(p.Ranks) < need {
			t.Fatalf("%d ranks < min %d", len(p.Ranks), need)
		}
		if j.MaxWorkers > 0 && len(p.Ranks) > j.MaxWorkers {
			t.Fatalf("%d ranks > max %d", len(p.Ranks), j.MaxWorkers)
		}
		if len(p.Ranks) != p.Replicas*stages {
			t.Fatalf("%d ranks != %d replicas × %d stages", len(p.Ranks), p.Replicas, stages)
		}
		used := map[string]bool{}
		sumByStage := make([]int64, stages)
		replicaShare := map[int]int64{}
		replicaSpeed := map[int]float64{}
		for i, r := range p.Ranks {
			if r.Rank != i {
				t.Fatalf("rank %d at index %d", r.Rank, i)
			}
			w, ok := byID[r.WorkerID]
			if !ok || used[r.WorkerID] {
				t.Fatalf("rank %d: worker %q unknown or used twice", i, r.WorkerID)
			}
			used[r.WorkerID] = true
			if r.Addr != w.Addr {
				t.Fatalf("rank %d addr %q, worker has %q", i, r.Addr, w.Addr)
			}
			if r.BatchShare < 1 {
				t.Fatalf("rank %d share %d < 1", i, r.BatchShare)
			}
			if i > 0 {
				prev := p.Ranks[i-1]
				if prev.Stage > r.Stage || (prev.Stage == r.Stage && prev.Replica >= r.Replica) {
					t.Fatalf("ranks not in (stage, replica) order at %d", i)
				}
			}
			sumByStage[r.Stage] += r.BatchShare
			if s, ok := replicaShare[r.Replica]; ok && s != r.BatchShare {
				t.Fatalf("replica %d has shares %d and %d", r.Replica, s, r.BatchShare)
			}
			replicaShare[r.Replica] = r.BatchShare
			if sp, ok := replicaSpeed[r.Replica]; !ok || w.Speed < sp {
				replicaSpeed[r.Replica] = w.Speed
			}
		}
		for s, sum := range sumByStage {
			if sum != j.GlobalBatch {
				t.Fatalf("stage %d shares sum to %d, want %d", s, sum, j.GlobalBatch)
			}
		}
		// Proportional: each share within one sample of the exact quota.
		var total float64
		for _, sp := range replicaSpeed {
			total += sp
		}
		for r, sp := range replicaSpeed {
			q := float64(j.GlobalBatch) * sp / total
			if math.Abs(float64(replicaShare[r])-q) >= 1+1e-6 {
				t.Fatalf("replica %d share %d, quota %.3f", r, replicaShare[r], q)
			}
		}
		// The workers used are the fastest ones.
		slowestUsed := math.Inf(1)
		for id := range used {
			slowestUsed = min(slowestUsed, byID[id].Speed)
		}
		for _, w := range ws {
			if !used[w.ID] && w.Speed > slowestUsed {
				t.Fatalf("faster worker %s (%.2f) left out; slowest used %.2f", w.ID, w.Speed, slowestUsed)
			}
		}
	})
}

// TestPlanDeterministic: the order of the workers does not change the plan.
func TestPlanDeterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		j, ws := genJob(t), genWorkers(t)
		a, err := Compute(j, ws)
		if err != nil {
			t.Fatal(err)
		}
		perm := rapid.Permutation(ws).Draw(t, "perm")
		b, err := Compute(j, perm)
		if err != nil {
			t.Fatal(err)
		}
		if Changed(a, b, 0) || a.Reason != b.Reason || a.Replicas != b.Replicas {
			t.Fatalf("plans differ by input order:\n%+v\n%+v", a, b)
		}
	})
}

// TestApportionExact: the largest-remainder split always sums exactly and
// stays within one of the quota, whatever the weights.
func TestApportionExact(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		total := rapid.Int64Range(0, 1<<40).Draw(t, "total")
		ws := rapid.SliceOfN(rapid.Float64Range(1e-3, 1e6), 1, 64).Draw(t, "weights")
		out := apportion(total, ws)
		var sum int64
		var wsum float64
		for _, w := range ws {
			wsum += w
		}
		for i, s := range out {
			sum += s
			q := float64(total) * ws[i] / wsum
			if math.Abs(float64(s)-q) > 1+q*1e-9 {
				t.Fatalf("share %d = %d, quota %f", i, s, q)
			}
		}
		if sum != total {
			t.Fatalf("sum %d != %d", sum, total)
		}
	})
}

func TestPlanExamples(t *testing.T) {
	ws := []Worker{{ID: "fast", Addr: "a", Speed: 3}, {ID: "slow", Addr: "b", Speed: 1}}
	p, err := Compute(Job{GlobalBatch: 64}, ws)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Ranks) != 2 || p.Ranks[0].WorkerID != "fast" || p.Ranks[0].BatchShare != 48 || p.Ranks[1].BatchShare != 16 {
		t.Fatalf("got %+v", p.Ranks)
	}
	if p.Layers != nil || p.PredictedStepSeconds != 0 {
		t.Fatalf("data-parallel plan without a model has layers or a step: %+v", p)
	}
	// Pipeline stages need the model's cost (TestPipeline* in
	// partition_test.go plan them).
	ws = append(ws, Worker{ID: "mid", Addr: "c", Speed: 2}, Worker{ID: "mid2", Addr: "d", Speed: 2})
	if _, err = Compute(Job{GlobalBatch: 10, Stages: 2}, ws); !errors.Is(err, ErrInvalidJob) {
		t.Fatalf("two stages without a model: err %v", err)
	}
	// Below the minimum: empty with a reason.
	p, err = Compute(Job{GlobalBatch: 10, MinWorkers: 5}, ws)
	if err != nil || len(p.Ranks) != 0 || p.Reason == "" {
		t.Fatalf("got %+v, %v", p, err)
	}
	// A batch of 1 feeds one replica only.
	p, _ = Compute(Job{GlobalBatch: 1}, ws)
	if len(p.Ranks) != 1 || p.Ranks[0].WorkerID != "fast" {
		t.Fatalf("got %+v", p.Ranks)
	}
	// A very slow worker whose share would be zero is left out.
	p, _ = Compute(Job{GlobalBatch: 4}, []Worker{{ID: "a", Speed: 1000}, {ID: "b", Speed: 1}})
	if len(p.Ranks) != 1 || p.Ranks[0].BatchShare != 4 {
		t.Fatalf("got %+v", p.Ranks)
	}
}

func TestPlanRefusesBadInput(t *testing.T) {
	cases := []struct {
		j    Job
		ws   []Worker
		want error
	}{
		{Job{GlobalBatch: 0}, nil, ErrInvalidJob},
		{Job{GlobalBatch: 8, MinWorkers: 4, MaxWorkers: 2}, nil, ErrInvalidJob},
		{Job{GlobalBatch: 8, Stages: 3, MaxWorkers: 2}, nil, ErrInvalidJob},
		{Job{GlobalBatch: 8, Stages: -1}, nil, ErrInvalidJob},
		{Job{GlobalBatch: 8, Stages: 2}, nil, ErrInvalidJob},
		{Job{GlobalBatch: 8}, []Worker{{ID: "a", Speed: 1, MemoryBytes: -1}}, ErrInvalidWorker},
		{Job{GlobalBatch: 8}, []Worker{{ID: "a", Speed: 1, LinkBytesPerSec: math.Inf(1)}}, ErrInvalidWorker},
		{Job{GlobalBatch: 8}, []Worker{{ID: "a", Speed: 1}, {ID: "a", Speed: 2}}, ErrInvalidWorker},
		{Job{GlobalBatch: 8}, []Worker{{ID: "a", Speed: 0}}, ErrInvalidWorker},
		{Job{GlobalBatch: 8}, []Worker{{ID: "a", Speed: math.NaN()}}, ErrInvalidWorker},
		{Job{GlobalBatch: 8}, []Worker{{ID: "", Speed: 1}}, ErrInvalidWorker},
	}
	for i, c := range cases {
		if _, err := Compute(c.j, c.ws); !errors.Is(err, c.want) {
			t.Errorf("case %d: err %v, want %v", i, err, c.want)
		}
	}
}

func TestChanged(t *testing.T) {
	a := Plan{Stages: 1, GlobalBatch: 100, Ranks: []Rank{{WorkerID: "x", BatchShare: 50}, {WorkerID: "y", BatchShare: 50}}}
	b := a
	b.Ranks = []Rank{{WorkerID: "x", BatchShare: 55}, {WorkerID: "y", BatchShare: 45}}
	if Changed(a, b, 0.2) || !Changed(a, b, 0.05) {
		t.Fatal("tolerance not applied")
	}
	// 201 → 163 is 19% of the old share but 23% of the new: the old plan's
	// step is 23% longer than balanced, which a 0.2 tolerance must not keep.
	c := Plan{Stages: 1, GlobalBatch: 512, Ranks: []Rank{{WorkerID: "x", BatchShare: 311}, {WorkerID: "y", BatchShare: 201}}}
	d := c
	d.Ranks = []Rank{{WorkerID: "x", BatchShare: 349}, {WorkerID: "y", BatchShare: 163}}
	if !Changed(c, d, 0.2) || !Changed(d, c, 0.2) {
		t.Fatal("tolerance not taken against the smaller share")
	}
	// Data parallel: the same workers in another order, same shares, are
	// not a change; with a share moved too, they are.
	b.Ranks = []Rank{{WorkerID: "y", BatchShare: 50}, {WorkerID: "x", BatchShare: 50}}
	if Changed(a, b, 0) {
		t.Fatal("a new ring order of the same shares counted as a change")
	}
	b.Ranks = []Rank{{WorkerID: "y", BatchShare: 40}, {WorkerID: "x", BatchShare: 60}}
	if !Changed(a, b, 0.1) {
		t.Fatal("reordered shares that moved not detected")
	}
	b.Ranks = []Rank{{WorkerID: "x", BatchShare: 50}, {WorkerID: "z", BatchShare: 50}}
	if !Changed(a, b, 1) {
		t.Fatal("a new worker not detected")
	}
	// Pipeline stages: the order decides the replicas, and counts.
	p := Plan{Stages: 2, GlobalBatch: 100, Ranks: []Rank{{WorkerID: "x", BatchShare: 50}, {WorkerID: "y", BatchShare: 50, Replica: 1}}}
	q := p
	q.Ranks = []Rank{{WorkerID: "y", BatchShare: 50}, {WorkerID: "x", BatchShare: 50, Replica: 1}}
	if !Changed(p, q, 1) {
		t.Fatal("pipeline reordering not detected")
	}
}
