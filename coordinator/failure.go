package coordinator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// Failure detection. A rank whose generation fails (a peer closed the ring,
// or a collective made no progress within its deadline) reports it with
// ReportFailure. The report alone removes nobody: in a ring every rank sees
// the failure, most of them from a live neighbour that gave up, so a report
// cannot say who failed, and reports from several ranks add nothing. The
// leader confirms it instead by the heartbeats of the generation's workers,
// which reach it every HeartbeatInterval: a worker silent for FailureConfirm
// while its generation is reported failed is removed as lost at once, and the
// planner re-plans without it. Silence without a report removes nobody
// before its lease expires (a coordinator failover or a long pause of the
// heartbeat path alone does not cost the job a generation), and a report
// that no silence confirms (a peer slow at evaluating or checkpointing)
// changes nothing.

// liveness is the leader's memory of worker heartbeats and open failure
// reports: the workers' leases (lease.go) and the failure confirmer's
// evidence. It is not replicated: a new leader starts with none and counts
// every worker as seen when it took office.
type liveness struct {
	mu      sync.Mutex
	seen    map[string]time.Time                 // worker id → last heartbeat (or register, report) on this node: its lease
	reports map[string]*api.ReportFailureRequest // job id → the newest open report
	at      map[string]time.Time                 // job id → when reports[job] arrived
	wake    chan struct{}                        // a report arrived (buffered, 1)
}

func newLiveness() *liveness {
	return &liveness{seen: map[string]time.Time{}, reports: map[string]*api.ReportFailureRequest{},
		at: map[string]time.Time{}, wake: make(chan struct{}, 1)}
}

// saw records that worker id was heard from now.
func (l *liveness) saw(id string, now time.Time) {
	l.mu.Lock()
	l.seen[id] = now
	l.mu.Unlock()
}

// swap records that worker id was heard from now and returns when it was
// heard from before (zero if never).
func (l *liveness) swap(id string, now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.seen[id]
	l.seen[id] = now
	return prev
}

// restore undoes swap(id, now) unless id was heard from since.
func (l *liveness) restore(id string, prev, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seen[id].Equal(now) {
		return
	}
	if prev.IsZero() {
		delete(l.seen, id)
	} else {
		l.seen[id] = prev
	}
}

// lastSeen is when worker id was last heard from on this node; zero if
// never.
func (l *liveness) lastSeen(id string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id]
}

// prune forgets the workers last heard from before before for which keep
// is false (they are no longer registered), so that the memory follows
// the registered workers, not every id ever seen.
func (l *liveness) prune(before time.Time, keep func(id string) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, t := range l.seen {
		if t.Before(before) && !keep(id) {
			delete(l.seen, id)
		}
	}
}

// report records a failure report and wakes the confirmer.
func (l *liveness) report(r *api.ReportFailureRequest, now time.Time) {
	l.mu.Lock()
	if old, ok := l.reports[r.GetJobId()]; !ok || old.GetGeneration() <= r.GetGeneration() {
		l.reports[r.GetJobId()] = r
		l.at[r.GetJobId()] = now
	}
	l.seen[r.GetWorkerId()] = now
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// silent lists the workers of plan whose last sign of life (or since, if
// later) is at least window before now, and how long each has been silent.
func (l *liveness) silent(plan *api.Plan, since, now time.Time, window time.Duration) map[string]time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]time.Duration{}
	for _, r := range plan.GetRanks() {
		last := l.seen[r.GetWorkerId()]
		if last.Before(since) {
			last = since
		}
		if d := now.Sub(last); d >= window {
			out[r.GetWorkerId()] = d
		}
	}
	return out
}

// openReports returns the open reports, dropping those whose job has moved
// on to another generation and those older than maxAge (the lease has
// decided by then).
func (l *liveness) openReports(current func(job string) (int64, bool), now time.Time, maxAge time.Duration) []*api.ReportFailureRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*api.ReportFailureRequest
	for job, r := range l.reports {
		gen, ok := current(job)
		if !ok || gen != r.GetGeneration() || now.Sub(l.at[job]) > maxAge {
			delete(l.reports, job)
			delete(l.at, job)
			continue
		}
		out = append(out, r)
	}
	return out
}

// HeartbeatInterval is how often workers heartbeat: four times per
// FailureConfirm window (so one late heartbeat is not silence), and at
// least three times per lease.
func (c Config) HeartbeatInterval() time.Duration {
	return min(c.LeaseTTL/3, c.FailureConfirm/4)
}

// noteFailure is the leader's half of ReportFailure.
func (s *Server) noteFailure(req *api.ReportFailureRequest) error {
	if req.GetJobId() == "" || req.GetWorkerId() == "" {
		return fmt.Errorf("%w: a failure report needs job and worker ids", ErrInvalidArgument)
	}
	if err := s.checkIncarnation(req.GetWorkerId(), req.GetIncarnation()); err != nil {
		return err
	}
	s.log.Info("failure reported", zap.String("job", req.GetJobId()), zap.String("by", req.GetWorkerId()),
		zap.Int64("generation", req.GetGeneration()), zap.String("error", req.GetError()))
	s.live.report(req, time.Now())
	return nil
}

// checkIncarnation refuses a request from a process whose registration
// another has taken over. An unknown worker passes: the handler decides.
func (s *Server) checkIncarnation(id string, inc int64) error {
	if w, ok := s.fsm.Worker(id); ok {
		return fenced(w, inc)
	}
	return nil
}

func superseded(w *api.Worker) error {
	return fmt.Errorf("%w: worker id %q was taken over by a newer process (collective address %s); this process must stop",
		ErrSuperseded, w.GetId(), w.GetProfile().GetCollectiveAddr())
}

// confirmFailures runs while this node leads: for each open failure report
// it removes the reported generation's workers whose heartbeats have
// stopped for FailureConfirm.
func (s *Server) confirmFailures(ctx context.Context) {
	tick := time.NewTicker(max(s.cfg.FailureConfirm/10, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.live.wake:
		}
		now := time.Now()
		since := s.leaderStart()
		if since.IsZero() {
			continue
		}
		current := func(job string) (int64, bool) {
			p, ok := s.fsm.Plan(job)
			return p.GetGeneration(), ok
		}
		for _, r := range s.live.openReports(current, now, s.cfg.LeaseTTL) {
			plan, ok := s.fsm.Plan(r.GetJobId())
			if !ok {
				continue
			}
			for id, quiet := range s.live.silent(plan, since, now, s.cfg.FailureConfirm) {
				w, ok := s.fsm.Worker(id)
				if !ok {
					continue // gone already (deregistered, or its lease expired)
				}
				reason := fmt.Sprintf("%s reported generation %d failed (%s); no heartbeat for %v",
					r.GetWorkerId(), r.GetGeneration(), r.GetError(), quiet.Round(time.Millisecond))
				_, _, err := s.apply(ctx, &api.CmdRemoveWorker{WorkerId: id, Reason: reason, LostUnixNano: now.UnixNano(), Incarnation: w.GetRegisteredUnixNano()})
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					s.log.Warn("remove lost worker", zap.String("worker", id), zap.Error(err))
					continue
				}
				s.log.Info("worker lost", zap.String("worker", id), zap.String("job", r.GetJobId()), zap.String("reason", reason))
			}
		}
	}
}
