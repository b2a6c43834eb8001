package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

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

// The first shares come from device profiles and are replaced as soon as
// every worker has measured its speed; a plan made from measured speeds
// stands for SpeedReplanMinAge before a large drift replaces it, and for
// FineReplanMinAge before a small one does.
func TestSpeedReplanHold(t *testing.T) {
	const hold, fineHold = time.Second, 3 * time.Second
	s := NewTestServer(t, func(c *Config) {
		c.LeaseTTL = time.Minute
		c.ReplanTolerance, c.SpeedReplanMinAge = 0.2, hold
		c.FineReplanTolerance, c.FineReplanMinAge = 0.03, fineHold
		c.ReplanInterval = 100 * time.Millisecond
	})
	ctx := ctxT(t, 30*time.Second)
	c, job, watch, p := pairPlan(ctx, t, s.Addr(), 9300)
	if p.Ranks[0].BatchShare != 45 {
		t.Fatalf("equal profiles, unequal shares: %v", p)
	}
	report := func(gen int64, speeds ...float64) {
		t.Helper()
		for i, sp := range speeds {
			if _, err := c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: fmt.Sprintf("w%d", i), Generation: gen, Step: 1, Samples: int64(sp), StepSeconds: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	shares := func(p *api.Plan) []int64 {
		var out []int64
		for _, r := range p.Ranks {
			out = append(out, r.BatchShare)
		}
		return out
	}
	// Profiles said equal; measurements say 2:1. Re-planned at once.
	since := time.Now()
	report(p.Generation, 200, 100)
	p = nextPlan(t, watch)
	if el := time.Since(since); el > hold/2 {
		t.Errorf("a plan made from profiles stood %v after every worker had measured its speed", el)
	}
	if p.Ranks[0].WorkerId != "w0" || !slices.Equal(shares(p), []int64{60, 30}) {
		t.Fatalf("shares not proportional to measured speeds: %v", p)
	}
	// A 10% drift of the smaller share (speeds 187.5 and 106.25 after
	// smoothing: 57/33): over the fine tolerance only, so it waits for the
	// fine hold.
	since = time.Now()
	report(p.Generation, 150, 125)
	p = nextPlan(t, watch)
	if el := time.Since(since); el < fineHold-200*time.Millisecond {
		t.Errorf("a small drift re-planned after %v (fine hold %v)", el, fineHold)
	}
	if !slices.Equal(shares(p), []int64{57, 33}) {
		t.Fatalf("shares after a small drift: %v", p)
	}
	// Now the speeds swap: a large drift, re-planned after the short hold.
	since = time.Now()
	report(p.Generation, 50, 400)
	p = nextPlan(t, watch)
	if el := time.Since(since); el < hold-200*time.Millisecond || el > fineHold-200*time.Millisecond {
		t.Errorf("a large drift re-planned after %v (hold %v, fine hold %v)", el, hold, fineHold)
	}
	if p.Ranks[0].WorkerId != "w1" {
		t.Fatalf("faster worker not first after the swap: %v", p)
	}
}

// Step reports are written at most once per ProgressInterval, but a
// worker's first measured speed is written at once: a worker's first
// reports carry none (its first steps are not measured), and the plan made
// from device profiles stood until the next interval (a half-speed pair at
// batch 1024 ran its first 1.4 s on profile shares).
func TestFirstSpeedWrittenAtOnce(t *testing.T) {
	s := NewTestServer(t, func(c *Config) {
		c.LeaseTTL = time.Minute
		c.ProgressInterval = time.Minute
		c.ReplanInterval = 100 * time.Millisecond
	})
	ctx := ctxT(t, 10*time.Second)
	c, job, watch, p := pairPlan(ctx, t, s.Addr(), 9400)
	report := func(step int64, speeds ...int64) {
		t.Helper()
		for i, sp := range speeds {
			if _, err := c.ReportProgress(ctx, &api.ReportProgressRequest{JobId: job, WorkerId: fmt.Sprintf("w%d", i), Generation: p.Generation, Step: step, Samples: sp, StepSeconds: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	report(1, 0, 0) // no speed yet; written (each worker's first report)
	since := time.Now()
	report(4, 200, 100)
	p = nextPlan(t, watch) // fails at the deadline if the speeds were dropped
	if el := time.Since(since); el > 2*time.Second {
		t.Errorf("re-planned %v after the first speeds", el)
	}
	if p.Ranks[0].WorkerId != "w0" || p.Ranks[0].BatchShare != 60 || p.Ranks[1].BatchShare != 30 {
		t.Fatalf("shares not from the first measured speeds: %v", p)
	}
	// Later step reports within the interval are still dropped: the speeds
	// stay as first measured.
	report(5, 10, 1000)
	st := s.FSM().State()
	for _, w := range st.GetWorkers() {
		if want := map[string]float64{"w0": 200, "w1": 100}[w.GetId()]; w.GetSamplesPerSecond() != want {
			t.Errorf("%s: speed %g, want %g (a report inside ProgressInterval was written)", w.GetId(), w.GetSamplesPerSecond(), want)
		}
	}
}

// pairPlan submits a job (global batch 90, two workers at least) to the
// coordinator at addr, registers w0 and w1 with equal device profiles
// (collective ports port and port+1), and returns the client, the job, its
// plan watch and the first plan with both ranks.
func pairPlan(ctx context.Context, t *testing.T, addr string, port int) (api.CoordinatorClient, string, api.Coordinator_WatchPlanClient, *api.Plan) {
	t.Helper()
	c := api.NewCoordinatorClient(Dial(t, addr))
	job, watch := submitAndWatch(ctx, t, c, &api.JobSpec{Name: "j", ConfigYaml: []byte("a: 1\n"), GlobalBatch: 90, MinWorkers: 2})
	for i := range 2 {
		if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: fmt.Sprintf("w%d", i), Profile: profile(fmt.Sprintf("127.0.0.1:%d", port+i), 10)}); err != nil {
			t.Fatal(err)
		}
	}
	p := nextPlan(t, watch)
	for len(p.Ranks) < 2 {
		p = nextPlan(t, watch)
	}
	return c, job, watch, p
}

// The re-plan settings are checked: a fine tolerance above the coarse one,
// or a negative one or hold, is refused by name.
func TestReplanConfigRefused(t *testing.T) {
	for name, tweak := range map[string]func(*Config){
		"FineReplanTolerance": func(c *Config) { c.FineReplanTolerance = c.ReplanTolerance * 2 },
		"FineReplanMinAge":    func(c *Config) { c.FineReplanMinAge = -time.Second },
		"ReplanTolerance":     func(c *Config) { c.ReplanTolerance = -0.1 },
	} {
		c := DefaultConfig()
		tweak(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("default config refused: %v", err)
	}
}

// A worker joining a running pipeline is taken in (the model
// re-partitioned) only when the new plan is predicted to be more than
// RepartitionGain faster; a loss re-plans at once.
func TestJoinRepartitionsOnlyWhenWorthIt(t *testing.T) {
	spec := &api.JobSpec{GlobalBatch: 64, MinWorkers: 1, PipelineStages: 2,
		ModelCost: &api.ModelCost{Layers: 8, EmbedFlops: 1e7, BlockFlops: 1e9, HeadFlops: 3e8}}
	worker := func(id string, gflops float64) *api.Worker {
		return &api.Worker{Id: id, JobId: "j", Profile: &api.DeviceProfile{Gflops: map[string]float64{"fp32": gflops}, CollectiveAddr: id + ":1"}}
	}
	state := func(ws ...*api.Worker) *api.SnapshotState {
		return &api.SnapshotState{Jobs: []*api.Job{{Id: "j", Spec: spec, State: api.JobState_JOB_STATE_RUNNING, Generation: 1}}, Workers: ws}
	}
	first := desiredPlans(state(worker("a", 100), worker("b", 100)), 0.1)
	if len(first) != 1 || len(first[0].GetRanks()) != 2 || len(first[0].GetStageLayers()) != 2 {
		t.Fatalf("first plan %v", first)
	}
	withPlan := func(ws ...*api.Worker) []*api.Plan {
		st := state(ws...)
		st.Plans = first
		return desiredPlans(st, 0.1)
	}
	if got := withPlan(worker("a", 100), worker("b", 100), worker("slow", 1)); len(got) != 0 {
		t.Errorf("a joiner at 1%% of the others' speed re-partitioned the pipeline: %v", got)
	}
	got := withPlan(worker("a", 100), worker("b", 100), worker("fast", 100))
	if len(got) != 1 || len(got[0].GetRanks()) != 3 {
		t.Fatalf("an equal joiner was not taken in: %v", got)
	}
	if got := withPlan(worker("a", 100)); len(got) != 1 {
		t.Fatalf("a loss did not re-plan: %v", got)
	}
}

// With the same workers, a pipeline is re-cut only from speeds every
// worker measured in its plan, and only when the new cut is predicted to
// be more than RepartitionGain faster; else only the shares follow.
func TestSameWorkersRepartitionOnMeasurements(t *testing.T) {
	spec := &api.JobSpec{GlobalBatch: 64, MinWorkers: 1, PipelineStages: 2,
		ModelCost: &api.ModelCost{Layers: 8, EmbedFlops: 1e7, BlockFlops: 1e9, HeadFlops: 1e7}}
	worker := func(id string, sps float64) *api.Worker {
		return &api.Worker{Id: id, JobId: "j", SamplesPerSecond: sps,
			Profile: &api.DeviceProfile{Gflops: map[string]float64{"fp32": 100}, CollectiveAddr: id + ":1"}}
	}
	state := func(ws ...*api.Worker) *api.SnapshotState {
		return &api.SnapshotState{Jobs: []*api.Job{{Id: "j", Spec: spec, State: api.JobState_JOB_STATE_RUNNING, Generation: 1}}, Workers: ws}
	}
	first := desiredPlans(state(worker("a", 0), worker("b", 0)), 0.1)
	if len(first) != 1 || len(first[0].GetStageLayers()) != 2 || first[0].GetStageLayers()[0].GetLast() != 4 {
		t.Fatalf("first plan %v: want 4 and 4 blocks", first)
	}
	withPlan := func(ws ...*api.Worker) []*api.Plan {
		st := state(ws...)
		st.Plans = first
		return desiredPlans(st, 0.01)
	}
	// Both stages at 4 blocks: equal samples/s of their stage means equal
	// devices; b at a third of a's means b's stage should hold fewer.
	if got := withPlan(worker("a", 10), worker("b", 0)); len(got) != 0 {
		t.Errorf("re-planned before every worker measured its speed: %v", got)
	}
	if got := withPlan(worker("a", 10), worker("b", 10)); len(got) != 0 {
		t.Errorf("re-planned at the speeds the plan was cut for: %v", got)
	}
	got := withPlan(worker("a", 10), worker("b", 10.0/3))
	if len(got) != 1 || len(got[0].GetStageLayers()) != 2 {
		t.Fatalf("a 3:1 speed difference did not re-cut the stages: %v", got)
	}
	if l := got[0].GetStageLayers(); l[0].GetLast() == 4 {
		t.Errorf("re-cut kept 4 and 4 blocks: %v", l)
	}
	// A small difference is not worth moving layers: the shares follow
	// (one rank per stage: nothing changes).
	if got := withPlan(worker("a", 10), worker("b", 9.8)); len(got) != 0 {
		t.Errorf("a 2%% speed difference re-cut the stages: %v", got)
	}
}

// With pipeline_stages auto, the links measured on a data-parallel plan
// decide: a slow link for the model's gradients turns it into a pipeline,
// a fast one keeps it.
func TestAutoStagesFollowMeasuredLinks(t *testing.T) {
	spec := &api.JobSpec{GlobalBatch: 64, MinWorkers: 1, AutoStages: true,
		ModelCost: &api.ModelCost{Layers: 8, EmbedFlops: 1e7, BlockFlops: 1e9, HeadFlops: 1e7,
			BlockParams: 3_000_000, BoundaryBytes: 64 << 10}}
	worker := func(id string, sps, link float64) *api.Worker {
		return &api.Worker{Id: id, JobId: "j", SamplesPerSecond: sps, LinkBytesPerSecond: link,
			Profile: &api.DeviceProfile{Gflops: map[string]float64{"fp32": 100}, CollectiveAddr: id + ":1"}}
	}
	state := func(ws ...*api.Worker) *api.SnapshotState {
		return &api.SnapshotState{Jobs: []*api.Job{{Id: "j", Spec: spec, State: api.JobState_JOB_STATE_RUNNING, Generation: 1}}, Workers: ws}
	}
	ids := []string{"a", "b", "c", "d"}
	var ws []*api.Worker
	for _, id := range ids {
		ws = append(ws, worker(id, 0, 0))
	}
	first := desiredPlans(state(ws...), 0.1)
	if len(first) != 1 || first[0].GetPipelineStages() != 1 {
		t.Fatalf("first plan %v: want data parallelism (links unknown)", first)
	}
	withLinks := func(link float64) []*api.Plan {
		var ws []*api.Worker
		for _, id := range ids {
			ws = append(ws, worker(id, 12, link))
		}
		st := state(ws...)
		st.Plans = first
		return desiredPlans(st, 0.01)
	}
	if got := withLinks(10e9); len(got) != 0 {
		t.Errorf("a 10 GB/s link turned data parallelism into %v", got)
	}
	got := withLinks(25e6) // 200 Mbit/s: 96 MB of gradients take seconds
	if len(got) != 1 || got[0].GetPipelineStages() < 2 {
		t.Fatalf("a 200 Mbit/s link kept data parallelism: %v", got)
	}
}

// A worker given other layers forgets the samples/s it measured on its old
// ones; a worker whose layers stay keeps its speed.
func TestForgetMovedSpeeds(t *testing.T) {
	plan := func(cut int32) *api.Plan {
		return &api.Plan{PipelineStages: 2, StageLayers: []*api.LayerRange{{First: 0, Last: cut}, {First: cut, Last: 8}},
			Ranks: []*api.Rank{{WorkerId: "a", Stage: 0}, {WorkerId: "b", Stage: 1}, {WorkerId: "c", Stage: 1}}}
	}
	ws := map[string]*api.Worker{"a": {Id: "a", SamplesPerSecond: 5}, "b": {Id: "b", SamplesPerSecond: 6}, "c": {Id: "c", SamplesPerSecond: 7}}
	forgetMovedSpeeds(ws, plan(4), plan(4))
	if ws["a"].SamplesPerSecond != 5 || ws["b"].SamplesPerSecond != 6 {
		t.Fatalf("same layers forgot speeds: %v", ws)
	}
	next := plan(4)
	next.Ranks[2].Stage = 0 // c moves to stage 0
	forgetMovedSpeeds(ws, plan(4), next)
	if ws["a"].SamplesPerSecond != 5 || ws["b"].SamplesPerSecond != 6 || ws["c"].SamplesPerSecond != 0 {
		t.Fatalf("after c moved: %v", ws)
	}
	forgetMovedSpeeds(ws, plan(4), plan(3))
	if ws["a"].SamplesPerSecond != 0 || ws["b"].SamplesPerSecond != 0 {
		t.Fatalf("after a re-cut: %v", ws)
	}
}
