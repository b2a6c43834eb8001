package coordinator

import (
	"github.com/loomtrain/loom/api"
)

// Plan watches fan out per job. A WatchPlan stream waits on its job's
// planSignal, which is closed only when that job's plan generation changes
// or the job ends: a progress batch, a heartbeat-driven expiry in another
// job or a checkpoint record wakes none of the job's watchers. And the plan
// a watcher sends is the FSM's own, shared read-only by every stream
// (putPlan and Restore replace a job's plan, never change it in place), so
// N watchers of a new generation cost N encodings on the wire and no copy
// in memory. Before, every FSM change woke every watcher, and each cloned
// its job and plan: N watchers × (changes per second) × (plan size).
type planSignal struct {
	gen   int64
	ended bool
	ch    chan struct{}
}

// planView returns job id's current plan (nil before the first; shared:
// the caller must not change it), whether the job ended, and a channel
// closed at the job's next generation or end (nil once it ended). ok is
// false when the job does not exist.
func (f *FSM) planView(id string) (p *api.Plan, ended bool, next <-chan struct{}, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.st.jobs[id]
	if !ok {
		return nil, false, nil, false
	}
	p, ended = f.st.plans[id], jobEnded(j)
	if ended {
		return p, true, nil, true
	}
	f.sigMu.Lock()
	defer f.sigMu.Unlock()
	sg := f.planSigs[id]
	if sg == nil {
		sg = &planSignal{gen: p.GetGeneration(), ch: make(chan struct{})}
		f.planSigs[id] = sg
	}
	return p, false, sg.ch, true
}

// signalPlansLocked wakes the watchers of every job whose generation
// changed or that ended (or vanished) since they last looked: after every
// applied entry, O(watched jobs). Caller holds f.mu for writing.
func (f *FSM) signalPlansLocked() {
	f.sigMu.Lock()
	defer f.sigMu.Unlock()
	for id, sg := range f.planSigs {
		j, ok := f.st.jobs[id]
		if ok && !jobEnded(j) && f.st.plans[id].GetGeneration() == sg.gen {
			continue
		}
		close(sg.ch)
		delete(f.planSigs, id) // the next planView makes a fresh one
	}
}
