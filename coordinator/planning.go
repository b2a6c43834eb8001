package coordinator

import (
	"context"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator/scheduler"
)

// schedJob is what the planner needs of a job spec.
func schedJob(spec *api.JobSpec) scheduler.Job {
	return scheduler.Job{
		GlobalBatch: spec.GetGlobalBatch(),
		MinWorkers:  int(spec.GetMinWorkers()),
		MaxWorkers:  int(spec.GetMaxWorkers()),
		Stages:      int(spec.GetPipelineStages()),
	}
}

// workerSpeeds gives the planner one speed per worker, in one unit: the
// measured samples/s from progress reports when every worker has reported,
// else the best profiled GFLOP/s (1 when a profile has none).
// A job with equal_shares counts every worker as equally fast.
func workerSpeeds(spec *api.JobSpec, ws []*api.Worker) []float64 {
	out := make([]float64, len(ws))
	if spec.GetEqualShares() {
		for i := range out {
			out[i] = 1
		}
		return out
	}
	measured := true
	for i, w := range ws {
		out[i] = w.GetSamplesPerSecond()
		measured = measured && out[i] > 0
	}
	if measured {
		return out
	}
	for i, w := range ws {
		best := 0.0
		for _, g := range w.GetProfile().GetGflops() {
			best = max(best, g)
		}
		out[i] = best
		if !(best > 0) || math.IsInf(best, 0) {
			out[i] = 1
		}
	}
	return out
}

func fromSchedPlan(jobID string, gen int64, p scheduler.Plan) *api.Plan {
	out := &api.Plan{
		JobId: jobID, Generation: gen, PipelineStages: int32(p.Stages),
		Replicas: int32(p.Replicas), GlobalBatch: p.GlobalBatch, Reason: p.Reason,
	}
	for _, r := range p.Ranks {
		out.Ranks = append(out.Ranks, &api.Rank{
			Rank: int32(r.Rank), WorkerId: r.WorkerID, CollectiveAddr: r.Addr,
			BatchShare: r.BatchShare, Stage: int32(r.Stage), Replica: int32(r.Replica),
		})
	}
	return out
}

func toSchedPlan(p *api.Plan) scheduler.Plan {
	out := scheduler.Plan{Stages: int(p.GetPipelineStages()), Replicas: int(p.GetReplicas()), GlobalBatch: p.GetGlobalBatch(), Reason: p.GetReason()}
	for _, r := range p.GetRanks() {
		out.Ranks = append(out.Ranks, scheduler.Rank{
			Rank: int(r.GetRank()), WorkerID: r.GetWorkerId(), Addr: r.GetCollectiveAddr(),
			BatchShare: r.GetBatchShare(), Stage: int(r.GetStage()), Replica: int(r.GetReplica()),
		})
	}
	return out
}

// desiredPlans computes, from one consistent copy of the state, the plans
// that differ from the current ones: pinned workers go to their job; pool
// workers go to live jobs in submission order, each taking up to its
// max_workers. tolerance is scheduler.Changed's share tolerance.
func desiredPlans(st *api.SnapshotState, tolerance float64) []*api.Plan {
	plans := map[string]*api.Plan{}
	for _, p := range st.GetPlans() {
		plans[p.GetJobId()] = p
	}
	var pool []*api.Worker
	pinned := map[string][]*api.Worker{}
	for _, w := range st.GetWorkers() {
		if w.GetDraining() {
			continue // on its way out
		}
		if w.GetJobId() == "" {
			pool = append(pool, w)
		} else {
			pinned[w.GetJobId()] = append(pinned[w.GetJobId()], w)
		}
	}
	var out []*api.Plan
	for _, j := range st.GetJobs() { // sorted by id = submission order
		if jobEnded(j) {
			continue
		}
		ws := pinned[j.GetId()]
		if limit := int(j.GetSpec().GetMaxWorkers()); limit == 0 || len(ws) < limit {
			take := len(pool)
			if limit > 0 {
				take = min(take, limit-len(ws))
			}
			ws = append(ws, pool[:take]...)
			pool = pool[take:]
		}
		in := make([]scheduler.Worker, len(ws))
		speeds := workerSpeeds(j.GetSpec(), ws)
		for i, w := range ws {
			in[i] = scheduler.Worker{ID: w.GetId(), Addr: w.GetProfile().GetCollectiveAddr(), Speed: speeds[i]}
		}
		sp, err := scheduler.Compute(schedJob(j.GetSpec()), in)
		if err != nil {
			continue // refused at submit; cannot happen for a stored job
		}
		cur, ok := plans[j.GetId()]
		if ok && !scheduler.Changed(toSchedPlan(cur), sp, tolerance) && cur.GetReason() == sp.Reason {
			continue
		}
		out = append(out, fromSchedPlan(j.GetId(), j.GetGeneration()+1, sp))
	}
	return out
}

// currentPlan is job's plan in st (nil if none).
func currentPlan(st *api.SnapshotState, job string) *api.Plan {
	for _, p := range st.GetPlans() {
		if p.GetJobId() == job {
			return p
		}
	}
	return nil
}

// speedOnly reports whether p differs from its job's current plan only in
// what follows from measured speeds: batch shares and the ring order (the
// planner orders ranks by speed); same workers at the same addresses and
// stages, same reason.
func speedOnly(st *api.SnapshotState, p *api.Plan) bool {
	cur := currentPlan(st, p.GetJobId())
	if cur == nil || cur.GetReason() != p.GetReason() || cur.GetGlobalBatch() != p.GetGlobalBatch() ||
		cur.GetPipelineStages() != p.GetPipelineStages() || len(cur.GetRanks()) != len(p.GetRanks()) {
		return false
	}
	type place struct {
		worker, addr string
		stage        int32
	}
	at := map[place]int{}
	for _, r := range cur.GetRanks() {
		at[place{r.GetWorkerId(), r.GetCollectiveAddr(), r.GetStage()}]++
	}
	for _, r := range p.GetRanks() {
		k := place{r.GetWorkerId(), r.GetCollectiveAddr(), r.GetStage()}
		if at[k] == 0 {
			return false
		}
		at[k]--
	}
	return true
}

// measuredPlan reports whether p's batch shares come from speeds measured
// on every one of its workers (rather than from device profiles, or equal
// by the job's choice).
func measuredPlan(st *api.SnapshotState, p *api.Plan) bool {
	speed := map[string]float64{}
	for _, w := range st.GetWorkers() {
		speed[w.GetId()] = w.GetSamplesPerSecond()
	}
	for _, r := range p.GetRanks() {
		if !(speed[r.GetWorkerId()] > 0) {
			return false
		}
	}
	for _, j := range st.GetJobs() {
		if j.GetId() == p.GetJobId() {
			return len(p.GetRanks()) > 0 && !j.GetSpec().GetEqualShares()
		}
	}
	return false
}

// reconcile runs on the leader only, until ctx ends (leadership lost or
// shutdown): after every state change it writes the plans that differ from
// the current ones, one log entry per new generation.
//
// A plan that changes shares for speed alone replaces one this leader wrote
// from measured speeds only once that plan is SpeedReplanMinAge old (a
// share drift over ReplanTolerance) or FineReplanMinAge old (a smaller one,
// over FineReplanTolerance); a plan whose shares came from device profiles
// is replaced as soon as every worker has measured its speed.
func (s *Server) reconcile(ctx context.Context) {
	type written struct {
		at       time.Time
		measured bool
	}
	published := map[string]written{} // job -> this leader's last plan for it
	tolerance := s.cfg.ReplanTolerance
	if f := s.cfg.FineReplanTolerance; f > 0 {
		tolerance = f
	}
	for {
		ch := s.fsm.Changed()
		st := s.fsm.State()
		for _, p := range desiredPlans(st, tolerance) {
			last := published[p.GetJobId()]
			if speedOnly(st, p) && last.measured {
				hold := s.cfg.SpeedReplanMinAge
				if !scheduler.Changed(toSchedPlan(currentPlan(st, p.GetJobId())), toSchedPlan(p), s.cfg.ReplanTolerance) {
					hold = s.cfg.FineReplanMinAge
				}
				if time.Since(last.at) < hold {
					continue // re-checked on the next change or interval
				}
			}
			published[p.GetJobId()] = written{time.Now(), measuredPlan(st, p)}
			if _, _, err := s.apply(ctx, &api.CmdPutPlan{Plan: p}); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("write plan", zap.String("job", p.GetJobId()), zap.Int64("generation", p.GetGeneration()), zap.Error(err))
				continue
			}
			s.log.Info("new plan", zap.String("job", p.GetJobId()), zap.Int64("generation", p.GetGeneration()),
				zap.Int("ranks", len(p.GetRanks())), zap.String("reason", p.GetReason()))
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(s.cfg.ReplanInterval):
		}
	}
}
