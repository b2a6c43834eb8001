package coordinator

import (
	"testing"

	"github.com/loomtrain/loom/api"
)

// Only a change of batch shares and ring order counts as a re-plan for
// speed, the kind the leader holds back for SpeedReplanMinAge; new workers,
// a lost one, a moved one, another reason, or a first plan never wait.
func TestSpeedOnly(t *testing.T) {
	plan := func(job, reason string, shares ...int64) *api.Plan {
		p := &api.Plan{JobId: job, GlobalBatch: 96, PipelineStages: 1, Replicas: int32(len(shares)), Reason: reason}
		for i, s := range shares {
			p.Ranks = append(p.Ranks, &api.Rank{Rank: int32(i), WorkerId: string(rune('a' + i)), BatchShare: s})
		}
		return p
	}
	st := &api.SnapshotState{Plans: []*api.Plan{plan("j", "", 48, 48)}}
	for name, tc := range map[string]struct {
		next *api.Plan
		want bool
	}{
		"shares":      {plan("j", "", 64, 32), true},
		"same":        {plan("j", "", 48, 48), true},
		"joined":      {plan("j", "", 32, 32, 32), false},
		"reason":      {plan("j", "waiting", 48, 48), false},
		"another job": {plan("k", "", 64, 32), false},
	} {
		if got := speedOnly(st, tc.next); got != tc.want {
			t.Errorf("%s: speedOnly = %v, want %v", name, got, tc.want)
		}
	}
	// The planner orders the ring by speed: a new order of the same
	// workers is a speed change too; another worker in a place is not.
	swapped := plan("j", "", 32, 64)
	swapped.Ranks[0].WorkerId, swapped.Ranks[1].WorkerId = "b", "a"
	if !speedOnly(st, swapped) {
		t.Error("a ring reordered by speed not counted as a speed-only change")
	}
	moved := plan("j", "", 48, 48)
	moved.Ranks[1].CollectiveAddr = "10.0.0.9:7000"
	if speedOnly(st, moved) {
		t.Error("a worker at a new address counted as a speed-only change")
	}
}
