package coordinator

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// Leases. A worker holds a lease by heartbeat, and the lease lives in the
// leader's memory only (liveness.seen, failure.go): a heartbeat renews it
// without a Raft entry, so the log of a steady cluster grows with what
// changes, not with how many workers heartbeat or for how long. The log
// records the changes: a registration (which starts a lease), a
// deregistration, a drain, and an expiry, one CmdRemoveWorker written by
// the leader alone.
//
// A worker's lease runs LeaseTTL from the last time this node heard from
// it (heartbeat, registration or failure report) while leading, and never
// ends before LeaseTTL after this node took office: a new leader knows no
// heartbeat, so it starts every lease afresh and a failover expires no
// live worker, while one that went silent before the failover expires a
// lease after the new leader's start. (Nomad's leader keeps heartbeat
// timers in memory and resets them on election the same way; etcd renews
// leases on its leader without a log entry.)
//
// The lease expiry stored in a Worker of the FSM is the one granted at
// registration; the leader's answers (Heartbeat, ListWorkers) carry the
// live one.

// setLeaderStart records when this node took office (after applying the
// log written before its term); zero when it does not lead. Whoever waits
// in awaitOffice is woken.
func (s *Server) setLeaderStart(t time.Time) {
	if t.IsZero() {
		s.leaderSince.Store(nil)
	} else {
		s.leaderSince.Store(&t)
	}
	s.officeMu.Lock()
	if s.office != nil {
		close(s.office)
	}
	s.office = make(chan struct{})
	s.officeMu.Unlock()
}

// officeChange is closed at the next setLeaderStart.
func (s *Server) officeChange() <-chan struct{} {
	s.officeMu.Lock()
	defer s.officeMu.Unlock()
	if s.office == nil {
		s.office = make(chan struct{})
	}
	return s.office
}

// leaderStart is when this node took office; zero while it does not lead
// or has not yet applied the log of the terms before.
func (s *Server) leaderStart() time.Time {
	if t := s.leaderSince.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// leaseExpiry is when worker id's lease ends on a leader in office since
// since.
func (s *Server) leaseExpiry(id string, since time.Time) time.Time {
	last := s.live.lastSeen(id)
	if last.Before(since) {
		last = since
	}
	return last.Add(s.cfg.LeaseTTL)
}

// awaitOffice returns when this node took office, waiting while it leads
// but still applies the log of the terms before (leaderDuties' barrier),
// up to LeaderWait bounded by ctx: until then it knows neither every
// registration nor when its leases start. A node that does not lead gets
// ErrNotLeader.
func (s *Server) awaitOffice(ctx context.Context) (time.Time, error) {
	if t := s.leaderStart(); !t.IsZero() && s.IsLeader() {
		return t, nil // in office: every call but those of a failover
	}
	wait := time.NewTimer(s.cfg.LeaderWait)
	defer wait.Stop()
	for {
		changed := s.officeChange() // before the checks: a change after them wakes the wait
		if !s.IsLeader() {
			return time.Time{}, fmt.Errorf("%w: %s", ErrNotLeader, s.cfg.NodeID)
		}
		if t := s.leaderStart(); !t.IsZero() {
			return t, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-s.closing():
			return time.Time{}, fmt.Errorf("%w: heartbeat", ErrShuttingDown)
		case <-wait.C:
			return time.Time{}, fmt.Errorf("%w: %s leads but has not applied the log after %v", ErrNoLeader, s.cfg.NodeID, s.cfg.LeaderWait)
		case <-changed:
		}
	}
}

// heartbeat is the leader's half of Heartbeat: it renews the lease of a
// registered worker in memory and answers with the new expiry, the
// worker's generation and whether it drains. No Raft entry is written. An
// unknown worker (its lease expired, or it never registered) gets
// ErrUnknownWorker and must register again; a superseded incarnation gets
// ErrSuperseded.
func (s *Server) heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	if _, err := s.awaitOffice(ctx); err != nil {
		return nil, err
	}
	gen, draining, err := s.fsm.heartbeatView(req.GetWorkerId(), req.GetIncarnation())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s.live.saw(req.GetWorkerId(), now)
	s.metrics.heartbeats.Add(1)
	return &api.HeartbeatResponse{LeaseExpiryUnixNano: now.Add(s.cfg.LeaseTTL).UnixNano(), Generation: gen, Draining: draining}, nil
}

// withLeases sets each worker's lease expiry to the live one when this node
// leads in office. Elsewhere nobody knows it (the leases live in the
// leader's memory; the FSM holds only the one granted at registration,
// long past for a worker that heartbeats), so it is cleared: a follower
// answering ListWorkers while it cannot reach the leader shows the lease
// as unknown, not as expired.
func (s *Server) withLeases(ws []*api.Worker) []*api.Worker {
	since := s.leaderStart()
	if since.IsZero() || !s.IsLeader() {
		for _, w := range ws {
			w.LeaseExpiryUnixNano = 0
		}
		return ws
	}
	for _, w := range ws {
		w.LeaseExpiryUnixNano = s.leaseExpiry(w.GetId(), since).UnixNano()
	}
	return ws
}

// expireLeases runs while this node leads: every LeaseTTL/10 it removes,
// through Raft (one CmdRemoveWorker each), every worker whose lease has
// passed; the planner then makes a new generation for its job. It also
// forgets the heartbeats of workers no longer registered.
func (s *Server) expireLeases(ctx context.Context) {
	ttl := s.cfg.LeaseTTL
	tick := time.NewTicker(max(ttl/10, 20*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		since := s.leaderStart()
		if since.IsZero() {
			continue
		}
		start := time.Now()
		holders := s.fsm.leaseHolders()
		registered := make(map[string]bool, len(holders))
		for _, h := range holders {
			registered[h.id] = true
			// Read the clock per worker: each removal before waits for its
			// commit, and a heartbeat may have come in meanwhile.
			now := time.Now()
			exp := s.leaseExpiry(h.id, since)
			if now.Before(exp) {
				continue
			}
			quiet := now.Sub(exp.Add(-ttl)).Round(time.Millisecond)
			_, _, err := s.apply(ctx, &api.CmdRemoveWorker{WorkerId: h.id, Reason: fmt.Sprintf("lease expired (no heartbeat for %v)", quiet),
				LostUnixNano: now.UnixNano(), Incarnation: h.incarnation})
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				s.log.Warn("expire lease", zap.String("worker", h.id), zap.Error(err))
				continue
			}
			s.metrics.leaseExpiries.Add(1)
			s.log.Info("worker lease expired", zap.String("worker", h.id), zap.Duration("silent", quiet))
		}
		// A worker registered after holders was read was heard from after
		// now-ttl, so it is kept.
		s.live.prune(start.Add(-ttl), func(id string) bool { return registered[id] })
	}
}
