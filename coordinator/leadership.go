package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// watchLeadership runs for the node's life. Each time the node becomes
// leader it starts the leader's duties under a context cancelled when
// leadership ends.
func (s *Server) watchLeadership(ctx context.Context) {
	var stopDuties func()
	stop := func() {
		// Out of office before the duties stop (no lease is answered from
		// a past term meanwhile, and awaitOffice's waiters are woken), and
		// again after: duties that were taking office may have set it.
		s.setLeaderStart(time.Time{})
		if stopDuties != nil {
			stopDuties()
			stopDuties = nil
		}
		s.setLeaderStart(time.Time{})
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-s.notify:
			stop()
			if !leader {
				s.log.Info("lost leadership")
				continue
			}
			s.log.Info("became leader")
			stopDuties = s.startDuties(ctx)
		}
	}
}

// startDuties runs leaderDuties in a goroutine; the returned function
// cancels them and waits until they have returned.
func (s *Server) startDuties(ctx context.Context) func() {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.leaderDuties(lctx)
	}()
	return func() { cancel(); <-done }
}

// leaderDuties runs while this node leads: it waits until every earlier
// entry is applied, takes office (every lease starts afresh from now),
// records the cluster id and this node's addresses, then expires leases,
// confirms failures, writes plans and flushes progress until ctx ends.
func (s *Server) leaderDuties(ctx context.Context) {
	if err := s.raft.Barrier(s.cfg.ApplyTimeout).Error(); err != nil {
		s.log.Warn("leader barrier", zap.Error(err))
		return
	}
	s.progress.reset()
	s.setLeaderStart(time.Now()) // every lease starts afresh (lease.go)
	if s.fsm.ClusterID() == "" {
		if _, _, err := s.apply(ctx, &api.CmdInitCluster{ClusterId: s.cfg.ClusterID}); err != nil {
			s.log.Error("record cluster id", zap.Error(err))
		}
	} else if s.fsm.ClusterID() != s.cfg.ClusterID {
		s.log.Warn("configured cluster id differs from the stored one; the stored one wins",
			zap.String("configured", s.cfg.ClusterID), zap.String("stored", s.fsm.ClusterID()))
	}
	self := &api.CoordinatorMember{Id: s.cfg.NodeID, RaftAddr: s.RaftAddr(), GrpcAddr: s.Addr()}
	if !s.memberRecorded(self) {
		if _, _, err := s.apply(ctx, &api.CmdPutCoordinator{Member: self}); err != nil {
			s.log.Error("record own address", zap.Error(err))
		}
	}
	if _, _, err := s.apply(ctx, &api.CmdLeaderElected{NodeId: s.cfg.NodeID, Term: s.raft.CurrentTerm()}); err != nil {
		s.log.Warn("record leader change in the event log", zap.Error(err))
	}
	if s.disc != nil {
		s.disc.setLeader(ctx, true)
		defer s.disc.setLeader(context.Background(), false)
	}
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); s.reconcile(ctx) }()
	go func() { defer wg.Done(); s.expireLeases(ctx) }()
	go func() { defer wg.Done(); s.confirmFailures(ctx) }()
	go func() { defer wg.Done(); s.flushProgress(ctx) }()
	wg.Wait()
}

func (s *Server) memberRecorded(m *api.CoordinatorMember) bool {
	for _, c := range s.fsm.Coordinators() {
		if c.GetId() == m.GetId() {
			return c.GetRaftAddr() == m.GetRaftAddr() && c.GetGrpcAddr() == m.GetGrpcAddr()
		}
	}
	return false
}

// join asks the coordinators in cfg.Join (forwarded to their leader) to add
// this node as a voter, retrying while no leader is known, until ctx ends.
// A cluster id mismatch is final.
func (s *Server) join(ctx context.Context) error {
	conn, err := api.Dial(s.cfg.Join, s.dialOptions()...)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := api.NewClusterClient(conn)
	req := &api.JoinRequest{ClusterId: s.cfg.ClusterID, NodeId: s.cfg.NodeID, RaftAddr: s.RaftAddr(), GrpcAddr: s.Addr()}
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Join(cctx, req)
		cancel()
		if err == nil {
			s.log.Info("joined cluster", zap.Strings("via", s.cfg.Join))
			return nil
		}
		if api.ReasonOf(err) == api.ReasonClusterIDMismatch || api.ReasonOf(err) == api.ReasonInvalidArgument {
			return fmt.Errorf("coordinator: join via %v refused: %w", s.cfg.Join, err)
		}
		s.log.Warn("join failed, retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("coordinator: join via %v: %w (last error: %v)", s.cfg.Join, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// addMember is the leader's half of Join.
func (s *Server) addMember(ctx context.Context, req *api.JoinRequest) error {
	if req.GetNodeId() == "" || req.GetRaftAddr() == "" || req.GetGrpcAddr() == "" {
		return fmt.Errorf("%w: join needs node id, raft and grpc addresses", ErrInvalidArgument)
	}
	have := s.fsm.ClusterID()
	if have == "" {
		return fmt.Errorf("%w: leader %s has not recorded the cluster id yet", ErrNoLeader, s.cfg.NodeID)
	}
	if req.GetClusterId() != have {
		return fmt.Errorf("%w: node %q asked to join cluster %q, this is cluster %q", ErrClusterIDMismatch, req.GetNodeId(), req.GetClusterId(), have)
	}
	if err := s.sameMember(req); err != nil {
		return err
	}
	f := s.raft.AddVoter(raft.ServerID(req.GetNodeId()), raft.ServerAddress(req.GetRaftAddr()), 0, s.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return fmt.Errorf("add voter %s: %w", req.GetNodeId(), err)
	}
	_, _, err := s.apply(ctx, &api.CmdPutCoordinator{Member: &api.CoordinatorMember{
		Id: req.GetNodeId(), RaftAddr: req.GetRaftAddr(), GrpcAddr: req.GetGrpcAddr(),
	}})
	return err
}

// sameMember refuses a join whose id is already a member at other
// addresses: it is a second node given the same id (replacing the member's
// addresses would cut the real one off), or a member that moved and must be
// removed first. A join from the same addresses is a retry.
func (s *Server) sameMember(req *api.JoinRequest) error {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	raftAddr := ""
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == req.GetNodeId() {
			raftAddr = string(srv.Address)
		}
	}
	grpcAddr := ""
	for _, c := range s.fsm.Coordinators() {
		if c.GetId() == req.GetNodeId() {
			grpcAddr = c.GetGrpcAddr()
		}
	}
	if (raftAddr != "" && raftAddr != req.GetRaftAddr()) || (grpcAddr != "" && grpcAddr != req.GetGrpcAddr()) {
		return fmt.Errorf("%w: coordinator id %q is already a member (raft %s, grpc %s); this node (raft %s, grpc %s) needs another --id, or remove the member first with 'loom coordinator remove %s'",
			ErrInvalidArgument, req.GetNodeId(), raftAddr, dashIfEmpty(grpcAddr), req.GetRaftAddr(), req.GetGrpcAddr(), req.GetNodeId())
	}
	return nil
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// removeMember is the leader's half of RemoveCoordinator.
func (s *Server) removeMember(ctx context.Context, id string) error {
	known := false
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		known = known || string(srv.ID) == id
	}
	if !known {
		return fmt.Errorf("%w: %q is not in the raft configuration", ErrUnknownNode, id)
	}
	if _, _, err := s.apply(ctx, &api.CmdRemoveCoordinator{NodeId: id}); err != nil && !errors.Is(err, ErrUnknownNode) {
		return err
	}
	return s.raft.RemoveServer(raft.ServerID(id), 0, s.cfg.ApplyTimeout).Error()
}
