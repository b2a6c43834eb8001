package coordinator

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// The FSM keeps what happened to each job, for `loom events`, the status
// page and `loom plot`: an event log and a progress history. Both are
// written inside Apply from the command being applied (its Raft index and
// the leader's append time), so every replica holds the same ones and they
// survive a failover and a snapshot. Both are bounded.

// maxEvents bounds the event log (all jobs together); the oldest go first.
const maxEvents = 8192

// maxHistoryPoints bounds each job's progress points and its worker speed
// points; at the bound neighbours merge and the stride doubles.
const maxHistoryPoints = 2048

// maxEvals bounds each job's evaluations (the oldest half is thinned out).
const maxEvals = 1024

// event appends an event stamped with the command being applied.
func (s *state) event(e *api.Event) {
	e.Index, e.UnixNano = s.applyIndex, s.applyUnixNano
	s.events = append(s.events, e)
	s.eventCounts[e.Kind]++
	if n := len(s.events) - maxEvents; n > 0 {
		s.events = slices.Delete(s.events, 0, n)
		s.eventsDropped += uint64(n)
	}
}

// history returns job id's history, created on first use.
func (s *state) history(id string) *api.JobHistory {
	h, ok := s.histories[id]
	if !ok {
		h = &api.JobHistory{JobId: id, Stride: 1, WorkerStride: 1}
		s.histories[id] = h
	}
	return h
}

// recordStep folds a progress report that advanced job j to its history:
// stride reports make one point (their mean loss, the last one's step and
// time, the job's speed then).
func (s *state) recordStep(j *api.Job, r *api.ReportProgressRequest) {
	h := s.history(j.Id)
	if h.Pending == nil {
		h.Pending = &api.HistoryPoint{}
	}
	h.Pending.Loss += r.GetLoss()
	h.Pending.Step, h.Pending.UnixNano = r.GetStep(), s.applyUnixNano
	h.PendingReports++
	if h.PendingReports < h.Stride {
		return
	}
	p := h.Pending
	p.Loss /= float64(h.PendingReports)
	p.SamplesPerSecond = s.jobSpeed(j.Id)
	h.Points = append(h.Points, p)
	h.Pending, h.PendingReports = nil, 0
	if len(h.Points) >= maxHistoryPoints {
		h.Points = mergePairs(h.Points)
		h.Stride *= 2
	}
}

// mergePairs halves a full history: each pair of neighbours becomes one
// point with their mean loss and speed at the later one's step and time.
func mergePairs(ps []*api.HistoryPoint) []*api.HistoryPoint {
	out := ps[:0]
	for i := 0; i+1 < len(ps); i += 2 {
		a, b := ps[i], ps[i+1]
		out = append(out, &api.HistoryPoint{UnixNano: b.UnixNano, Step: b.Step,
			Loss: (a.Loss + b.Loss) / 2, SamplesPerSecond: (a.SamplesPerSecond + b.SamplesPerSecond) / 2})
	}
	if len(ps)%2 == 1 {
		out = append(out, ps[len(ps)-1])
	}
	return out
}

// jobSpeed is the sum of the measured samples/s of the job's ranks.
func (s *state) jobSpeed(id string) float64 {
	var sum float64
	for _, rk := range s.plans[id].GetRanks() {
		sum += s.workers[rk.GetWorkerId()].GetSamplesPerSecond()
	}
	return sum
}

// recordSpeed adds a worker's smoothed speed to its job's history, one
// point per worker_stride of its measurements; at the bound every other
// point of each worker is dropped and the stride doubles, so every worker
// keeps an evenly spaced line however the reports interleave.
func (s *state) recordSpeed(jobID string, w *api.Worker) {
	h := s.history(jobID)
	if h.WorkerReports == nil {
		h.WorkerReports = map[string]int64{}
	}
	id := w.GetId()
	if h.WorkerReports[id]++; h.WorkerReports[id] < h.WorkerStride {
		return
	}
	h.WorkerReports[id] = 0
	h.WorkerSpeeds = append(h.WorkerSpeeds, &api.WorkerSpeedPoint{UnixNano: s.applyUnixNano, WorkerId: id, SamplesPerSecond: w.GetSamplesPerSecond()})
	if len(h.WorkerSpeeds) >= maxHistoryPoints {
		nth := map[string]int{}
		h.WorkerSpeeds = slices.DeleteFunc(h.WorkerSpeeds, func(p *api.WorkerSpeedPoint) bool {
			n := nth[p.GetWorkerId()]
			nth[p.GetWorkerId()] = n + 1
			return n%2 == 1
		})
		h.WorkerStride *= 2
	}
}

// recordEval adds an evaluation to the history; it reports whether it was
// new (a report retried after its first copy committed is not).
func (s *state) recordEval(j *api.Job, r *api.ReportProgressRequest) bool {
	h := s.history(j.Id)
	if n := len(h.Evals); n > 0 && h.Evals[n-1].GetStep() == r.GetStep() {
		return false
	}
	h.Evals = append(h.Evals, &api.EvalPoint{UnixNano: s.applyUnixNano, Step: r.GetStep(), Loss: r.GetTestLoss(), Accuracy: r.GetTestAccuracy()})
	if len(h.Evals) > maxEvals {
		h.Evals = append(everyOther(h.Evals[:maxEvals/2]), h.Evals[maxEvals/2:]...)
	}
	return true
}

// flushPending ends job id's history at its last report: the point being
// filled, if any, is added as it is.
func (s *state) flushPending(id string) {
	h := s.history(id)
	if h.PendingReports == 0 {
		return
	}
	p := h.Pending
	p.Loss /= float64(h.PendingReports)
	p.SamplesPerSecond = s.jobSpeed(id)
	h.Points = append(h.Points, p)
	h.Pending, h.PendingReports = nil, 0
}

// maxEndedHistories bounds how many ended jobs keep their history; a new
// submission drops the history of the job that ended first beyond it.
const maxEndedHistories = 64

func (s *state) pruneHistories() {
	var ended []*api.Job
	for id := range s.histories {
		if j, ok := s.jobs[id]; !ok || jobEnded(j) {
			if !ok {
				delete(s.histories, id)
				continue
			}
			ended = append(ended, j)
		}
	}
	if len(ended) <= maxEndedHistories {
		return
	}
	slices.SortFunc(ended, func(a, b *api.Job) int { return cmp.Compare(a.GetSubmittedUnixNano(), b.GetSubmittedUnixNano()) })
	for _, j := range ended[:len(ended)-maxEndedHistories] {
		delete(s.histories, j.GetId())
	}
}

func everyOther[T any](xs []T) []T {
	out := xs[:0]
	for i := 0; i < len(xs); i += 2 {
		out = append(out, xs[i])
	}
	return out
}

// planMessage describes a plan generation for the event log: its ranks
// with their shares (and stages), and why it was made.
func planMessage(p *api.Plan) string {
	if len(p.GetRanks()) == 0 {
		return fmt.Sprintf("generation %d: no ranks (%s)", p.GetGeneration(), p.GetReason())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "generation %d: %d rank", p.GetGeneration(), len(p.GetRanks()))
	if len(p.GetRanks()) > 1 {
		b.WriteString("s")
	}
	if p.GetPipelineStages() > 1 {
		fmt.Fprintf(&b, " in %d stages", p.GetPipelineStages())
	}
	b.WriteString(" (")
	for i, r := range p.GetRanks() {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", r.GetWorkerId(), r.GetBatchShare())
		if p.GetPipelineStages() > 1 {
			fmt.Fprintf(&b, " stage %d", r.GetStage())
		}
	}
	b.WriteString(")")
	if p.GetReason() != "" {
		b.WriteString(": " + p.GetReason())
	}
	return b.String()
}

// Events returns the events of job id (every event when id is empty) with
// an index above after, oldest first, and how many older events the log
// dropped. A job's view includes the cluster events (leader changes) from
// its submission to its end.
func (f *FSM) Events(id string, after uint64) ([]*api.Event, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	// The job's life, in Raft indexes: from its first event (its
	// submission) to its last once it has ended.
	var from, to uint64 = 0, math.MaxUint64
	if j, ok := f.st.jobs[id]; ok {
		first := true
		for _, e := range f.st.events {
			if e.GetJobId() == id {
				if first {
					from, first = e.GetIndex(), false
				}
				if jobEnded(j) {
					to = e.GetIndex()
				}
			}
		}
	}
	// Events are in index order: start after the caller's index.
	start, _ := slices.BinarySearchFunc(f.st.events, after+1, func(e *api.Event, i uint64) int { return cmp.Compare(e.GetIndex(), i) })
	var out []*api.Event
	for _, e := range f.st.events[start:] {
		if id == "" || e.GetJobId() == id || (e.GetJobId() == "" && e.GetIndex() >= from && e.GetIndex() <= to) {
			out = append(out, proto.CloneOf(e))
		}
	}
	return out, f.st.eventsDropped
}

// EventCounts returns how many events of each kind this process applied
// since it started.
func (f *FSM) EventCounts() map[string]uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.st.eventCounts)
}

// JobSpeed is the sum of the measured samples/s of job id's ranks.
func (f *FSM) JobSpeed(id string) float64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.jobSpeed(id)
}

// History returns a copy of job id's progress history (empty, not nil, for
// a job that has reported nothing yet).
func (f *FSM) History(id string) *api.JobHistory {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if h, ok := f.st.histories[id]; ok {
		return proto.CloneOf(h)
	}
	return &api.JobHistory{JobId: id, Stride: 1, WorkerStride: 1}
}
