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
	j := scheduler.Job{
		GlobalBatch: spec.GetGlobalBatch(),
		MinWorkers:  int(spec.GetMinWorkers()),
		MaxWorkers:  int(spec.GetMaxWorkers()),
		Stages:      int(spec.GetPipelineStages()),
		AutoStages:  spec.GetAutoStages(),
		Micro:       int(spec.GetMicroBatches()),
	}
	j.UniformLayers = spec.GetUniformLayers()
	if c := spec.GetModelCost(); c != nil {
		j.Model = &scheduler.ModelCost{
			Layers: int(c.GetLayers()), EmbedFLOPs: c.GetEmbedFlops(), BlockFLOPs: c.GetBlockFlops(), HeadFLOPs: c.GetHeadFlops(),
			EmbedParams: c.GetEmbedParams(), BlockParams: c.GetBlockParams(), HeadParams: c.GetHeadParams(),
			BlockActBytes: c.GetBlockActBytes(), HeadActBytes: c.GetHeadActBytes(), BoundaryBytes: c.GetBoundaryBytes(),
		}
	}
	return j
}

// pipelineSpeeds is workerSpeeds for a job with a model cost, in the unit
// its planner needs, full-model samples/s: a rank's measured samples/s of
// its stage times the stage's share of the model's FLOPs (from the current
// plan), when every worker has measured its speed in that plan (measured
// true; also with equal_shares); else each device's best profiled GFLOP/s
// over the model's FLOPs per sample.
func pipelineSpeeds(spec *api.JobSpec, cur *api.Plan, ws []*api.Worker) (speeds []float64, measured bool) {
	c := spec.GetModelCost()
	layers := int(c.GetLayers())
	total := c.GetEmbedFlops() + float64(layers)*c.GetBlockFlops() + c.GetHeadFlops()
	fraction := map[string]float64{}
	for _, r := range cur.GetRanks() {
		st := int(r.GetStage())
		if st >= len(cur.GetStageLayers()) {
			continue
		}
		lr := cur.GetStageLayers()[st]
		f := float64(lr.GetLast()-lr.GetFirst()) * c.GetBlockFlops()
		if lr.GetFirst() == 0 {
			f += c.GetEmbedFlops()
		}
		if int(lr.GetLast()) == layers {
			f += c.GetHeadFlops()
		}
		fraction[r.GetWorkerId()] = f / total
	}
	out := make([]float64, len(ws))
	if spec.GetEqualShares() {
		for i := range out {
			out[i] = 1
		}
		return out, true
	}
	measured = true
	for i, w := range ws {
		out[i] = w.GetSamplesPerSecond() * fraction[w.GetId()]
		measured = measured && out[i] > 0
	}
	if measured {
		return out, true
	}
	for i, w := range ws {
		out[i] = profileSpeed(w, total/1e9)
	}
	return out, false
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
		out[i] = profileSpeed(w, 1)
	}
	return out
}

// profileSpeed is w's best profiled GFLOP/s over flops (1 where the
// profile gives nothing usable).
func profileSpeed(w *api.Worker, flops float64) float64 {
	best := 0.0
	for _, g := range w.GetProfile().GetGflops() {
		best = max(best, g)
	}
	if s := best / flops; s > 0 && !math.IsInf(s, 0) {
		return s
	}
	return 1
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
	for _, l := range p.Layers {
		out.StageLayers = append(out.StageLayers, &api.LayerRange{First: int32(l.First), Last: int32(l.Last)})
	}
	out.PredictedStepSeconds = p.PredictedStepSeconds
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
	for _, l := range p.GetStageLayers() {
		out.Layers = append(out.Layers, scheduler.LayerRange{First: int(l.GetFirst()), Last: int(l.GetLast())})
	}
	out.PredictedStepSeconds = p.GetPredictedStepSeconds()
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
		var speeds []float64
		measured := false
		spec := j.GetSpec()
		if spec.GetModelCost() != nil {
			speeds, measured = pipelineSpeeds(spec, plans[j.GetId()], ws)
		} else {
			speeds = workerSpeeds(spec, ws)
		}
		for i, w := range ws {
			in[i] = scheduler.Worker{ID: w.GetId(), Addr: w.GetProfile().GetCollectiveAddr(), Speed: speeds[i],
				MemoryBytes: w.GetProfile().GetMemoryBytes(), LinkBytesPerSec: w.GetLinkBytesPerSecond()}
		}
		cur, ok := plans[j.GetId()]
		// A pipeline (or a job whose stage count the planner picks)
		// keeping its workers: its stages hold their layers' state, so
		// only their shares follow the measured speeds, unless a new
		// partition, from what every worker has measured in this plan
		// (speeds, links), is predicted to be worth moving layers for.
		staged := ok && spec.GetModelCost() != nil && (len(cur.GetStageLayers()) > 1 || spec.GetAutoStages())
		var sp scheduler.Plan
		var err error
		if staged && sameWorkers(cur, in) {
			if !measured {
				continue // the speeds of this plan are still coming in
			}
			speed := map[string]float64{}
			for _, w := range in {
				speed[w.ID] = w.Speed
			}
			sp = scheduler.Reshare(toSchedPlan(cur), speed)
			if fresh, err := scheduler.Compute(schedJob(spec), in); err == nil && worthMoving(spec, cur, fresh, in) {
				sp = fresh
			}
		} else if sp, err = scheduler.Compute(schedJob(spec), in); err != nil {
			continue // refused at submit; cannot happen for a stored job
		}
		if ok && !scheduler.Changed(toSchedPlan(cur), sp, tolerance) && cur.GetReason() == sp.Reason {
			continue
		}
		if staged && joinedOnly(cur, in) {
			// Workers joined a running pipeline: moving layers pauses every
			// stage, so the new partition must be predicted to be worth it;
			// until then the joiners stand by.
			now := scheduler.Predict(schedJob(spec), toSchedPlan(cur), in)
			if next := sp.PredictedStepSeconds; now > 0 && next > 0 && next > now*(1-RepartitionGain) {
				continue
			}
		}
		out = append(out, fromSchedPlan(j.GetId(), j.GetGeneration()+1, sp))
	}
	return out
}

// RepartitionGain is how much faster (a fraction of the predicted step
// time) a pipeline's new partition must be predicted to run than its
// current one, at the speeds and links measured now, for its layers to
// move: for workers that joined it to be taken in, or, with the same
// workers, for a new cut from their measurements (or, with auto stages, a
// new stage count) to replace the running one.
const RepartitionGain = 0.05

// worthMoving reports whether plan next is predicted to run a step more
// than RepartitionGain faster than cur does with workers as they are now,
// and differs from it in more than shares (otherwise nothing moves).
func worthMoving(spec *api.JobSpec, cur *api.Plan, next scheduler.Plan, workers []scheduler.Worker) bool {
	now := scheduler.Predict(schedJob(spec), toSchedPlan(cur), workers)
	return now > 0 && next.PredictedStepSeconds > 0 && next.PredictedStepSeconds < now*(1-RepartitionGain) && moves(cur, next)
}

// moves reports whether next places any worker on other layers than cur.
func moves(cur *api.Plan, next scheduler.Plan) bool {
	if int(cur.GetPipelineStages()) != next.Stages || len(cur.GetStageLayers()) != len(next.Layers) {
		return true
	}
	for s, l := range cur.GetStageLayers() {
		if int(l.GetFirst()) != next.Layers[s].First || int(l.GetLast()) != next.Layers[s].Last {
			return true
		}
	}
	stage := map[string]int{}
	for _, r := range cur.GetRanks() {
		stage[r.GetWorkerId()] = int(r.GetStage())
	}
	for _, r := range next.Ranks {
		if s, ok := stage[r.WorkerID]; !ok || s != r.Stage {
			return true
		}
	}
	return false
}

// joinedOnly reports whether ws are the workers of plan p, at the same
// addresses, and more: workers joined and none left.
func joinedOnly(p *api.Plan, ws []scheduler.Worker) bool {
	addr := map[string]string{}
	for _, w := range ws {
		addr[w.ID] = w.Addr
	}
	for _, r := range p.GetRanks() {
		if a, ok := addr[r.GetWorkerId()]; !ok || a != r.GetCollectiveAddr() {
			return false
		}
	}
	return len(ws) > len(p.GetRanks())
}

// sameWorkers reports whether ws are exactly the workers of plan p, at the
// same addresses.
func sameWorkers(p *api.Plan, ws []scheduler.Worker) bool {
	if len(p.GetRanks()) != len(ws) {
		return false
	}
	addr := map[string]string{}
	for _, r := range p.GetRanks() {
		addr[r.GetWorkerId()] = r.GetCollectiveAddr()
	}
	for _, w := range ws {
		if a, ok := addr[w.ID]; !ok || a != w.Addr {
			return false
		}
	}
	return true
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
