package coordinator

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator/scheduler"
)

// snapshotMagic opens every FSM snapshot, followed by a version byte and
// the protobuf api.SnapshotState.
var snapshotMagic = []byte("LOOMSNAP")

const snapshotVersion = 1

// FSM is the coordinator's replicated state machine. Raft calls Apply,
// Snapshot and Restore from one goroutine; every other method may be called
// from any goroutine. Apply is deterministic: any clock value it needs
// travels inside the command, stamped by the leader, or is the log entry's
// AppendedAt (the leader's clock when it appended the entry, replicated
// with it).
type FSM struct {
	log *zap.Logger

	mu      sync.RWMutex
	st      state
	applied uint64
	// entries counts the command entries this process applied, by type,
	// refused ones included (for metrics and the log-growth tests; not
	// replicated, not in snapshots, kept across Restore).
	entries map[CmdType]uint64
	changed chan struct{} // closed (and replaced) after every change

	sigMu    sync.Mutex             // guards planSigs; taken after mu
	planSigs map[string]*planSignal // by job id, while watched (planwatch.go)
}

// ApplyResult is what FSM.Apply returns for every entry: the command's
// result message (e.g. the created job) or its refusal.
type ApplyResult struct {
	Msg proto.Message
	Err error
}

// NewFSM returns an empty state machine.
func NewFSM(log *zap.Logger) *FSM {
	return &FSM{log: log, st: newState(), entries: map[CmdType]uint64{}, changed: make(chan struct{}), planSigs: map[string]*planSignal{}}
}

// Changed returns a channel that is closed at the next change of the state
// other than a lease renewal.
// Callers re-read the state after it fires, then call Changed again.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// AppliedIndex is the index of the last log entry applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// AppliedEntries returns how many command entries this process has applied
// since it started, by CmdType.Label (refused and undecodable ones
// included): what the log grows by, kind by kind.
func (f *FSM) AppliedEntries() map[string]uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]uint64, len(f.entries))
	for t, n := range f.entries {
		out[t.Label()] += n
	}
	return out
}

// notifyLocked wakes every Changed waiter. Caller holds f.mu for writing.
func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply implements raft.FSM. It never panics on bad input: a command that
// is refused still occupies its log slot and returns the refusal in
// ApplyResult.Err, identically on every node.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return ApplyResult{}
	}
	t, m, err := DecodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries[t]++
	if err != nil {
		f.log.Error("raft entry not applied", zap.Uint64("index", l.Index), zap.Error(err))
		return ApplyResult{Err: err}
	}
	f.applied = l.Index
	f.st.applyIndex = l.Index
	f.st.applyUnixNano = 0
	if !l.AppendedAt.IsZero() {
		f.st.applyUnixNano = l.AppendedAt.UnixNano()
	}
	var res ApplyResult
	switch c := m.(type) {
	case *api.CmdInitCluster:
		res = f.st.initCluster(c)
	case *api.CmdPutCoordinator:
		res = f.st.putCoordinator(c)
	case *api.CmdRemoveCoordinator:
		res = f.st.removeCoordinator(c)
	case *api.CmdSubmitJob:
		res = f.st.submitJob(c)
	case *api.CmdCancelJob:
		res = f.st.cancelJob(c)
	case *api.CmdRegisterWorker:
		res = f.st.registerWorker(c)
	case *api.CmdHeartbeat:
		res = f.st.heartbeat(c)
	case *api.CmdRemoveWorker:
		res = f.st.removeWorker(c)
	case *api.CmdPutPlan:
		res = f.st.putPlan(c)
	case *api.CmdReportProgress:
		res = f.st.reportProgress(c)
	case *api.CmdReportProgressBatch:
		res = f.st.reportProgressBatch(c)
	case *api.CmdCommitCheckpoint:
		res = f.st.commitCheckpoint(c)
	case *api.CmdDrainWorker:
		res = f.st.drainWorker(c)
	case *api.CmdLeaderElected:
		f.st.event(&api.Event{Kind: "leader", Message: fmt.Sprintf("%s became leader (term %d)", c.GetNodeId(), c.GetTerm())})
	default:
		res = ApplyResult{Err: fmt.Errorf("%w: %s has no case in Apply", ErrUnknownCommand, t)}
	}
	// Lease renewals (from logs of older builds) change nothing a watcher
	// or the planner reads, so they wake no one.
	if res.Err == nil && t != CmdHeartbeat {
		f.notifyLocked()
		f.signalPlansLocked()
	}
	return res
}

func (s *state) initCluster(c *api.CmdInitCluster) ApplyResult {
	if c.GetClusterId() == "" {
		return ApplyResult{Err: fmt.Errorf("%w: empty cluster id", ErrInvalidArgument)}
	}
	if s.clusterID != "" && s.clusterID != c.GetClusterId() {
		return ApplyResult{Err: fmt.Errorf("%w: cluster is %q, not %q", ErrClusterIDMismatch, s.clusterID, c.GetClusterId())}
	}
	s.clusterID = c.GetClusterId()
	return ApplyResult{}
}

func (s *state) putCoordinator(c *api.CmdPutCoordinator) ApplyResult {
	m := c.GetMember()
	if m.GetId() == "" || m.GetRaftAddr() == "" {
		return ApplyResult{Err: fmt.Errorf("%w: coordinator needs id and raft address", ErrInvalidArgument)}
	}
	m = proto.CloneOf(m)
	m.Leader, m.Suffrage = false, "" // live facts, read from raft, not stored
	s.coordinators[m.GetId()] = m
	return ApplyResult{}
}

func (s *state) removeCoordinator(c *api.CmdRemoveCoordinator) ApplyResult {
	if _, ok := s.coordinators[c.GetNodeId()]; !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrUnknownNode, c.GetNodeId())}
	}
	delete(s.coordinators, c.GetNodeId())
	return ApplyResult{}
}

func (s *state) submitJob(c *api.CmdSubmitJob) ApplyResult {
	if err := validateSpec(c.GetSpec()); err != nil {
		return ApplyResult{Err: err}
	}
	if j := s.jobByRequest(c.GetRequestId()); j != nil {
		return ApplyResult{Msg: proto.CloneOf(j)} // a retried submit
	}
	s.nextJob++
	j := &api.Job{
		Id:                fmt.Sprintf("job-%04d", s.nextJob),
		Spec:              proto.CloneOf(c.GetSpec()),
		State:             api.JobState_JOB_STATE_PENDING,
		SubmittedUnixNano: c.GetNowUnixNano(),
		RequestId:         c.GetRequestId(),
		Reason:            "waiting for the first plan",
	}
	s.jobs[j.Id] = j
	s.pruneHistories()
	s.event(&api.Event{JobId: j.Id, Kind: "submitted", Message: fmt.Sprintf("job %q submitted (global batch %d)", j.Spec.GetName(), j.Spec.GetGlobalBatch())})
	return ApplyResult{Msg: proto.CloneOf(j)}
}

// jobByRequest returns the job submitted with request id rid, or nil.
func (s *state) jobByRequest(rid string) *api.Job {
	if rid == "" {
		return nil
	}
	for _, j := range s.jobs {
		if j.RequestId == rid {
			return j
		}
	}
	return nil
}

// validateSpec checks a job spec; the scheduler decides what it can plan.
func validateSpec(spec *api.JobSpec) error {
	if spec == nil || spec.GetName() == "" {
		return fmt.Errorf("%w: job needs a name", ErrInvalidArgument)
	}
	if err := scheduler.ValidateJob(schedJob(spec)); err != nil {
		return fmt.Errorf("%w: job %q: %v", ErrInvalidArgument, spec.GetName(), err)
	}
	return nil
}

func (s *state) cancelJob(c *api.CmdCancelJob) ApplyResult {
	j, ok := s.jobs[c.GetJobId()]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrUnknownJob, c.GetJobId())}
	}
	if !jobEnded(j) { // cancelling twice, or after completion, is a no-op
		j.State = api.JobState_JOB_STATE_CANCELLED
		j.Reason = c.GetReason()
		s.flushPending(j.Id)
		s.event(&api.Event{JobId: j.Id, Kind: "cancelled", Message: "cancelled: " + c.GetReason(), Step: j.Step, Generation: j.Generation})
	}
	return ApplyResult{Msg: proto.CloneOf(j)}
}

// liveJob returns job id if it exists and has not ended.
func (s *state) liveJob(id string) (*api.Job, error) {
	j, ok := s.jobs[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, id)
	}
	switch j.State {
	case api.JobState_JOB_STATE_CANCELLED:
		return nil, fmt.Errorf("%w: %q (%s)", ErrJobCancelled, id, j.Reason)
	case api.JobState_JOB_STATE_COMPLETED:
		return nil, fmt.Errorf("%w: %q finished at step %d", ErrJobCompleted, id, j.Step)
	}
	return j, nil
}

// jobEnded reports whether the job was cancelled or completed: it gets no
// plan, no workers and no progress.
func jobEnded(j *api.Job) bool {
	return j.GetState() == api.JobState_JOB_STATE_CANCELLED || j.GetState() == api.JobState_JOB_STATE_COMPLETED
}

func (s *state) registerWorker(c *api.CmdRegisterWorker) ApplyResult {
	w := c.GetWorker()
	if w.GetId() == "" {
		return ApplyResult{Err: fmt.Errorf("%w: worker needs an id", ErrInvalidArgument)}
	}
	if old, ok := s.workers[w.GetId()]; ok && sameWorker(old, w) {
		old.LeaseExpiryUnixNano = max(old.LeaseExpiryUnixNano, w.GetLeaseExpiryUnixNano())
		return ApplyResult{Msg: proto.CloneOf(old)} // a retried registration
	}
	// A new worker, or another process taking the id over: the old
	// registration is replaced (its requests are refused from now on, by
	// registered_unix_nano), and a plan naming it is replaced because the
	// collective address differs.
	if w.GetJobId() != "" {
		if _, err := s.liveJob(w.GetJobId()); err != nil {
			return ApplyResult{Err: err}
		}
	}
	_, takeover := s.workers[w.GetId()]
	s.workers[w.GetId()] = proto.CloneOf(w)
	s.forgetLost(w.GetId())
	if w.GetJobId() != "" {
		msg := fmt.Sprintf("%s registered: %s", w.GetId(), w.GetProfile().GetDeviceName())
		if takeover {
			msg += " (a new process took its registration over)"
		}
		s.event(&api.Event{JobId: w.GetJobId(), Kind: "worker_joined", WorkerId: w.GetId(), Message: msg})
	}
	return ApplyResult{Msg: proto.CloneOf(w)}
}

// sameWorker decides whether a registration of an id that is already
// registered is a retry by the same worker (same profile, including its
// collective address, and same job) or another process taking the id over.
func sameWorker(old, w *api.Worker) bool {
	return old.GetJobId() == w.GetJobId() && proto.Equal(old.GetProfile(), w.GetProfile())
}

// fenced refuses a command for an incarnation of w other than the current.
func fenced(w *api.Worker, incarnation int64) error {
	if incarnation != 0 && incarnation != w.GetRegisteredUnixNano() {
		return superseded(w)
	}
	return nil
}

// heartbeat applies a retired CmdHeartbeat (a lease renewal through the log,
// as builds before leader-held leases wrote them): the lease expiry it
// records is informational now, the leader's memory decides.
func (s *state) heartbeat(c *api.CmdHeartbeat) ApplyResult {
	w, ok := s.workers[c.GetWorkerId()]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q (its lease may have expired; register again)", ErrUnknownWorker, c.GetWorkerId())}
	}
	if err := fenced(w, c.GetIncarnation()); err != nil {
		return ApplyResult{Err: err}
	}
	w.LeaseExpiryUnixNano = max(w.LeaseExpiryUnixNano, c.GetLeaseExpiryUnixNano())
	return ApplyResult{Msg: proto.CloneOf(w)}
}

func (s *state) removeWorker(c *api.CmdRemoveWorker) ApplyResult {
	w, ok := s.workers[c.GetWorkerId()]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrUnknownWorker, c.GetWorkerId())}
	}
	if err := fenced(w, c.GetIncarnation()); err != nil {
		return ApplyResult{Err: err}
	}
	delete(s.workers, c.GetWorkerId())
	if w.GetJobId() != "" {
		e := &api.Event{JobId: w.GetJobId(), Kind: "worker_left", WorkerId: w.GetId(), Message: w.GetId() + " left"}
		if c.GetLostUnixNano() != 0 {
			e.Kind, e.Message = "worker_lost", w.GetId()+" lost: "+c.GetReason()
		}
		s.event(e)
	}
	if at := c.GetLostUnixNano(); at != 0 {
		w.LostUnixNano = at
		w.LostReason = c.GetReason()
		s.forgetLost(w.GetId())
		s.lost = append(s.lost, w)
		if len(s.lost) > maxLost {
			s.lost = s.lost[len(s.lost)-maxLost:]
		}
	}
	return ApplyResult{}
}

// maxLost bounds the list of workers whose lease expired.
const maxLost = 64

// forgetLost drops id from the lost list (it registered again).
func (s *state) forgetLost(id string) {
	s.lost = slices.DeleteFunc(s.lost, func(w *api.Worker) bool { return w.GetId() == id })
}

// drainWorker marks a worker draining: the planner leaves it out from now
// on. Draining a draining worker is a no-op.
func (s *state) drainWorker(c *api.CmdDrainWorker) ApplyResult {
	w, ok := s.workers[c.GetWorkerId()]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q (not registered, or its lease expired)", ErrUnknownWorker, c.GetWorkerId())}
	}
	if !w.Draining && w.GetJobId() != "" {
		s.event(&api.Event{JobId: w.GetJobId(), Kind: "worker_draining", WorkerId: w.GetId(), Message: w.GetId() + " draining: it leaves at the next step boundary"})
	}
	w.Draining = true
	return ApplyResult{Msg: proto.CloneOf(w)}
}

func (s *state) putPlan(c *api.CmdPutPlan) ApplyResult {
	p := c.GetPlan()
	j, err := s.liveJob(p.GetJobId())
	if err != nil {
		return ApplyResult{Err: err}
	}
	if p.GetGeneration() != j.Generation+1 {
		return ApplyResult{Err: fmt.Errorf("%w: plan generation %d for job %q, current is %d", ErrStaleGeneration, p.GetGeneration(), j.Id, j.Generation)}
	}
	for _, r := range p.GetRanks() {
		if _, ok := s.workers[r.GetWorkerId()]; !ok {
			return ApplyResult{Err: fmt.Errorf("%w: plan for %q names %q", ErrUnknownWorker, j.Id, r.GetWorkerId())}
		}
	}
	forgetMovedSpeeds(s.workers, s.plans[j.Id], p)
	s.plans[j.Id] = proto.CloneOf(p)
	j.Generation = p.GetGeneration()
	s.event(&api.Event{JobId: j.Id, Kind: "plan", Generation: p.GetGeneration(), Step: j.Step, Message: planMessage(p)})
	if len(p.GetRanks()) > 0 {
		j.State, j.Reason = api.JobState_JOB_STATE_RUNNING, ""
	} else {
		j.State, j.Reason = api.JobState_JOB_STATE_PENDING, p.GetReason()
	}
	return ApplyResult{Msg: proto.CloneOf(p)}
}

// checkProgress validates a progress report against the state; shared by
// the leader's pre-check and Apply. A final report (done) skips the
// generation check (the last step may precede a re-plan) and is a no-op on
// a job that another rank already completed. It returns the job and whether
// the report changes nothing.
func (s *state) checkProgress(r *api.ReportProgressRequest) (*api.Job, bool, error) {
	if r.GetDone() {
		if j, ok := s.jobs[r.GetJobId()]; ok && j.State == api.JobState_JOB_STATE_COMPLETED {
			return j, true, nil
		}
	}
	j, err := s.liveJob(r.GetJobId())
	if err != nil {
		return nil, false, err
	}
	if !r.GetDone() && r.GetGeneration() != j.Generation {
		return nil, false, fmt.Errorf("%w: report for generation %d of %q, current is %d", ErrStaleGeneration, r.GetGeneration(), j.Id, j.Generation)
	}
	for _, rk := range s.plans[j.Id].GetRanks() {
		if rk.GetWorkerId() == r.GetWorkerId() {
			return j, false, nil
		}
	}
	return nil, false, fmt.Errorf("%w: %q is not a rank of %q generation %d", ErrNotInPlan, r.GetWorkerId(), j.Id, j.Generation)
}

func (s *state) reportProgress(c *api.CmdReportProgress) ApplyResult {
	r := c.GetReport()
	j, noop, err := s.checkProgress(r)
	if err != nil {
		return ApplyResult{Err: err}
	}
	if noop {
		return ApplyResult{Msg: &api.ReportProgressResponse{Generation: j.Generation}}
	}
	if w, ok := s.workers[r.GetWorkerId()]; ok && c.GetSamplesPerSecond() > 0 {
		w.SamplesPerSecond = smoothSpeed(w.SamplesPerSecond, c.GetSamplesPerSecond())
		s.recordSpeed(j.Id, w)
	}
	if w, ok := s.workers[r.GetWorkerId()]; ok && r.GetLinkBytesPerSecond() > 0 {
		w.LinkBytesPerSecond = r.GetLinkBytesPerSecond()
	}
	if r.GetStep() > j.Step && !r.GetDone() {
		s.recordStep(j, r)
	}
	if r.GetStep() >= j.Step {
		j.Step, j.LastLoss = r.GetStep(), r.GetLoss()
	}
	if r.TestAccuracy != nil {
		j.TestAccuracy, j.TestLoss = r.GetTestAccuracy(), r.GetTestLoss()
		if !r.GetDone() && s.recordEval(j, r) {
			s.event(&api.Event{JobId: j.Id, Kind: "eval", WorkerId: r.GetWorkerId(), Step: r.GetStep(), Generation: j.Generation,
				Message: fmt.Sprintf("step %d: held-out loss %.4f, accuracy %.4f", r.GetStep(), r.GetTestLoss(), r.GetTestAccuracy())})
		}
	}
	if r.GetDone() {
		j.State, j.Reason, j.CompletedUnixNano = api.JobState_JOB_STATE_COMPLETED, "", c.GetNowUnixNano()
		j.SamplesPerSecond = r.GetJobSamplesPerSecond()
		s.flushPending(j.Id)
		h := s.history(j.Id)
		h.Evals = append(h.Evals, &api.EvalPoint{UnixNano: s.applyUnixNano, Step: j.Step, Loss: r.GetTestLoss(), Accuracy: r.GetTestAccuracy()})
		s.event(&api.Event{JobId: j.Id, Kind: "completed", WorkerId: r.GetWorkerId(), Step: j.Step, Generation: j.Generation,
			Message: fmt.Sprintf("completed at step %d: test loss %.4f, accuracy %.4f", j.Step, r.GetTestLoss(), r.GetTestAccuracy())})
	}
	return ApplyResult{Msg: &api.ReportProgressResponse{Generation: j.Generation}}
}

// reportProgressBatch applies the step reports the leader gathered over one
// progress interval, in order, each as a CmdReportProgress of its own. A
// report refused now (its generation was replaced or its job ended since
// the leader accepted it) is skipped; the others still apply. The batch
// itself is never refused.
func (s *state) reportProgressBatch(c *api.CmdReportProgressBatch) ApplyResult {
	for _, r := range c.GetReports() {
		_ = s.reportProgress(r)
	}
	return ApplyResult{Msg: &api.ReportProgressResponse{}}
}

// forgetMovedSpeeds clears the measured speed of every worker that plan
// next gives other layers than prev did: its samples/s were of its old
// stage, and smoothing them into its new stage's would mislead the planner
// (which then waits for it to measure its new stage).
func forgetMovedSpeeds(workers map[string]*api.Worker, prev, next *api.Plan) {
	if len(prev.GetStageLayers()) == 0 && len(next.GetStageLayers()) == 0 {
		return
	}
	held := map[string]*api.LayerRange{} // worker -> its layers in prev
	for _, r := range prev.GetRanks() {
		if st := int(r.GetStage()); st < len(prev.GetStageLayers()) {
			held[r.GetWorkerId()] = prev.GetStageLayers()[st]
		}
	}
	for _, r := range next.GetRanks() {
		was, ok := held[r.GetWorkerId()]
		w := workers[r.GetWorkerId()]
		if w == nil || !ok || int(r.GetStage()) >= len(next.GetStageLayers()) {
			continue
		}
		if now := next.GetStageLayers()[r.GetStage()]; now.GetFirst() != was.GetFirst() || now.GetLast() != was.GetLast() {
			w.SamplesPerSecond = 0
		}
	}
}

// smoothSpeed folds a new samples/s measurement into a worker's speed
// (exponential moving average, weight 1/4 on the new value) so that one
// noisy step does not move batch shares; the first measurement is taken
// as is.
func smoothSpeed(old, sample float64) float64 {
	if old <= 0 {
		return sample
	}
	return 0.75*old + 0.25*sample
}

func (s *state) commitCheckpoint(c *api.CmdCommitCheckpoint) ApplyResult {
	ck := c.GetCheckpoint()
	j, ok := s.jobs[ck.GetJobId()]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrUnknownJob, ck.GetJobId())}
	}
	if f := c.GetFailure(); f != "" {
		j.CheckpointFailures++
		j.CheckpointFailedStep = ck.GetStep()
		j.CheckpointError = f
		s.event(&api.Event{JobId: j.Id, Kind: "checkpoint_failed", Step: ck.GetStep(), Generation: j.Generation,
			Message: fmt.Sprintf("checkpoint of step %d failed: %s", ck.GetStep(), f)})
		return ApplyResult{Msg: proto.CloneOf(j)}
	}
	if ck.GetPath() == "" || ck.GetManifestSha256() == "" || ck.GetStep() < 0 {
		return ApplyResult{Err: fmt.Errorf("%w: checkpoint needs a path, a manifest sha256 and a step >= 0", ErrInvalidArgument)}
	}
	if n := len(j.Checkpoints); n > 0 {
		last := j.Checkpoints[n-1]
		if last.Step == ck.GetStep() && last.Path == ck.GetPath() && last.ManifestSha256 == ck.GetManifestSha256() {
			return ApplyResult{Msg: proto.CloneOf(j)} // a retried commit
		}
		if ck.GetStep() <= last.Step {
			return ApplyResult{Err: fmt.Errorf("%w: step %d for %q, newest committed is step %d", ErrStaleCheckpoint, ck.GetStep(), j.Id, last.Step)}
		}
	}
	ck = proto.CloneOf(ck)
	ck.CommittedUnixNano = c.GetNowUnixNano()
	j.Checkpoints = append(j.Checkpoints, ck)
	s.event(&api.Event{JobId: j.Id, Kind: "checkpoint", Step: ck.GetStep(), Generation: j.Generation,
		Message: fmt.Sprintf("checkpoint of step %d recorded: %s", ck.GetStep(), ck.GetPath())})
	return ApplyResult{Msg: proto.CloneOf(j)}
}

// Snapshot implements raft.FSM: a deep copy taken under the lock; encoding
// and writing happen in Persist, concurrently with further Applies.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{st: f.st.toProto()}, nil
}

// Restore implements raft.FSM: replaces the whole state.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	st, err := decodeSnapshot(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := f.st.eventCounts // this process's, not the snapshot's
	f.st = stateFromProto(st)
	f.st.eventCounts = counts
	f.notifyLocked()
	f.signalPlansLocked()
	return nil
}

func decodeSnapshot(b []byte) (*api.SnapshotState, error) {
	if !bytes.HasPrefix(b, snapshotMagic) || len(b) < len(snapshotMagic)+1 {
		return nil, fmt.Errorf("snapshot: not a loom coordinator snapshot")
	}
	if v := b[len(snapshotMagic)]; v != snapshotVersion {
		return nil, fmt.Errorf("snapshot: version %d, this build reads %d", v, snapshotVersion)
	}
	st := &api.SnapshotState{}
	if err := proto.Unmarshal(b[len(snapshotMagic)+1:], st); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return st, nil
}

type fsmSnapshot struct{ st *api.SnapshotState }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.st)
	if err == nil {
		_, err = sink.Write(append(append(append([]byte{}, snapshotMagic...), snapshotVersion), b...))
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
