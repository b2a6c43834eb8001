package coordinator

import (
	"fmt"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// state is the replicated state machine's data. It is owned by FSM and
// mutated only inside FSM.Apply and FSM.Restore under FSM.mu; readers get
// clones through the FSM's accessors.
type state struct {
	clusterID    string
	nextJob      uint64
	jobs         map[string]*api.Job
	workers      map[string]*api.Worker
	plans        map[string]*api.Plan // by job id
	coordinators map[string]*api.CoordinatorMember
	lost         []*api.Worker // lease expired, oldest first, at most maxLost

	events        []*api.Event // oldest first, at most maxEvents (activity.go)
	eventsDropped uint64
	histories     map[string]*api.JobHistory // by job id
	// eventCounts counts the events this process applied, by kind (for
	// metrics; not replicated, not in snapshots).
	eventCounts map[string]uint64

	// The command being applied: its Raft index and the leader's clock
	// when it was appended (set by Apply before each command).
	applyIndex    uint64
	applyUnixNano int64
}

func newState() state {
	return state{
		jobs:         map[string]*api.Job{},
		workers:      map[string]*api.Worker{},
		plans:        map[string]*api.Plan{},
		coordinators: map[string]*api.CoordinatorMember{},
		histories:    map[string]*api.JobHistory{},
		eventCounts:  map[string]uint64{},
	}
}

// toProto builds a deterministic (sorted) deep copy of s for a snapshot.
func (s *state) toProto() *api.SnapshotState {
	out := &api.SnapshotState{ClusterId: s.clusterID, NextJob: s.nextJob}
	for _, k := range sortedKeys(s.jobs) {
		out.Jobs = append(out.Jobs, proto.CloneOf(s.jobs[k]))
	}
	for _, k := range sortedKeys(s.workers) {
		out.Workers = append(out.Workers, proto.CloneOf(s.workers[k]))
	}
	for _, k := range sortedKeys(s.plans) {
		out.Plans = append(out.Plans, proto.CloneOf(s.plans[k]))
	}
	for _, k := range sortedKeys(s.coordinators) {
		out.Coordinators = append(out.Coordinators, proto.CloneOf(s.coordinators[k]))
	}
	for _, w := range s.lost {
		out.LostWorkers = append(out.LostWorkers, proto.CloneOf(w))
	}
	for _, e := range s.events {
		out.Events = append(out.Events, proto.CloneOf(e))
	}
	out.EventsDropped = s.eventsDropped
	for _, k := range sortedKeys(s.histories) {
		out.Histories = append(out.Histories, proto.CloneOf(s.histories[k]))
	}
	return out
}

// stateFromProto is the inverse of toProto.
func stateFromProto(p *api.SnapshotState) state {
	s := newState()
	s.clusterID, s.nextJob = p.GetClusterId(), p.GetNextJob()
	for _, j := range p.GetJobs() {
		s.jobs[j.GetId()] = j
	}
	for _, w := range p.GetWorkers() {
		s.workers[w.GetId()] = w
	}
	for _, pl := range p.GetPlans() {
		s.plans[pl.GetJobId()] = pl
	}
	for _, c := range p.GetCoordinators() {
		s.coordinators[c.GetId()] = c
	}
	s.lost = p.GetLostWorkers()
	s.events, s.eventsDropped = p.GetEvents(), p.GetEventsDropped()
	for _, h := range p.GetHistories() {
		s.histories[h.GetJobId()] = h
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ---- read accessors: safe from any goroutine, return clones.

// ClusterID returns the cluster id set at bootstrap, "" before.
func (f *FSM) ClusterID() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.clusterID
}

// Job returns a copy of job id.
func (f *FSM) Job(id string) (*api.Job, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.st.jobs[id]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(j), true
}

// Jobs returns copies of every job, sorted by id.
func (f *FSM) Jobs() []*api.Job {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*api.Job, 0, len(f.st.jobs))
	for _, k := range sortedKeys(f.st.jobs) {
		out = append(out, proto.CloneOf(f.st.jobs[k]))
	}
	return out
}

// Worker returns a copy of worker id.
func (f *FSM) Worker(id string) (*api.Worker, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.st.workers[id]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(w), true
}

// LostWorkers returns copies of the workers whose lease expired recently,
// oldest first.
func (f *FSM) LostWorkers() []*api.Worker {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*api.Worker, 0, len(f.st.lost))
	for _, w := range f.st.lost {
		out = append(out, proto.CloneOf(w))
	}
	return out
}

// Workers returns copies of every registered worker, sorted by id.
func (f *FSM) Workers() []*api.Worker {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*api.Worker, 0, len(f.st.workers))
	for _, k := range sortedKeys(f.st.workers) {
		out = append(out, proto.CloneOf(f.st.workers[k]))
	}
	return out
}

// Plan returns a copy of the current plan of a job; false if the job has
// none yet.
func (f *FSM) Plan(jobID string) (*api.Plan, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, ok := f.st.plans[jobID]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(p), true
}

// GenerationOf returns the current generation of the worker's pinned job
// jobID, or else of the first (by id) job not ended whose plan names the
// worker; 0 if none. Every heartbeat asks, so it copies nothing (cloning
// every job and plan made a heartbeat 3x slower at 100 jobs).
func (f *FSM) GenerationOf(workerID, jobID string) int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.generationOf(workerID, jobID)
}

func (s *state) generationOf(workerID, jobID string) int64 {
	if j, ok := s.jobs[jobID]; ok && jobID != "" {
		return j.GetGeneration()
	}
	var best string
	var gen int64
	for id, j := range s.jobs {
		if jobEnded(j) || best != "" && id >= best {
			continue
		}
		for _, r := range s.plans[id].GetRanks() {
			if r.GetWorkerId() == workerID {
				best, gen = id, s.plans[id].GetGeneration()
				break
			}
		}
	}
	return gen
}

// heartbeatView is what a heartbeat needs of worker id, read under one
// lock and copying nothing: the worker must be registered (else
// ErrUnknownWorker) in this incarnation (else ErrSuperseded); its
// generation as GenerationOf gives it, and whether it drains.
func (f *FSM) heartbeatView(id string, incarnation int64) (gen int64, draining bool, err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.st.workers[id]
	if !ok {
		return 0, false, fmt.Errorf("%w: %q (its lease may have expired; register again)", ErrUnknownWorker, id)
	}
	if err := fenced(w, incarnation); err != nil {
		return 0, false, err
	}
	return f.st.generationOf(id, w.GetJobId()), w.GetDraining(), nil
}

// leaseHolder is a registered worker as the lease keeper sees it.
type leaseHolder struct {
	id          string
	incarnation int64 // its registered_unix_nano
}

// leaseHolders lists every registered worker, unsorted, copying no
// profile.
func (f *FSM) leaseHolders() []leaseHolder {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]leaseHolder, 0, len(f.st.workers))
	for id, w := range f.st.workers {
		out = append(out, leaseHolder{id, w.GetRegisteredUnixNano()})
	}
	return out
}

// Coordinators returns copies of the coordinator members recorded in the
// log, sorted by id.
func (f *FSM) Coordinators() []*api.CoordinatorMember {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*api.CoordinatorMember, 0, len(f.st.coordinators))
	for _, k := range sortedKeys(f.st.coordinators) {
		out = append(out, proto.CloneOf(f.st.coordinators[k]))
	}
	return out
}

// Snapshot of the whole state as one proto (a deep copy).
func (f *FSM) State() *api.SnapshotState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.toProto()
}
