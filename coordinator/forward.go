package coordinator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// writeMethods lists the unary methods the leader alone serves, with their
// reply type: those that change state, and Heartbeat (the leases live in
// the leader's memory). A follower forwards these to the leader; leaderReads
// it forwards when it can; everything else is answered locally.
var writeMethods = map[string]func() proto.Message{
	api.Coordinator_SubmitJob_FullMethodName:        func() proto.Message { return &api.SubmitJobResponse{} },
	api.Coordinator_CancelJob_FullMethodName:        func() proto.Message { return &api.CancelJobResponse{} },
	api.Coordinator_RegisterWorker_FullMethodName:   func() proto.Message { return &api.RegisterWorkerResponse{} },
	api.Coordinator_Heartbeat_FullMethodName:        func() proto.Message { return &api.HeartbeatResponse{} },
	api.Coordinator_DeregisterWorker_FullMethodName: func() proto.Message { return &api.DeregisterWorkerResponse{} },
	api.Coordinator_ReportFailure_FullMethodName:    func() proto.Message { return &api.ReportFailureResponse{} },
	api.Coordinator_DrainWorker_FullMethodName:      func() proto.Message { return &api.DrainWorkerResponse{} },
	api.Coordinator_ReportProgress_FullMethodName:   func() proto.Message { return &api.ReportProgressResponse{} },
	api.Coordinator_CommitCheckpoint_FullMethodName: func() proto.Message { return &api.CommitCheckpointResponse{} },
	api.Cluster_Join_FullMethodName:                 func() proto.Message { return &api.JoinResponse{} },
	api.Cluster_RemoveCoordinator_FullMethodName:    func() proto.Message { return &api.RemoveCoordinatorResponse{} },
}

// leaderReads lists the reads whose answer holds what only the leader knows
// (live leases). A follower forwards them to the leader it knows now, and
// answers from its own replica when it knows none or the leader fails to
// answer: a read during an election still gets the replicated part.
var leaderReads = map[string]func() proto.Message{
	api.Coordinator_ListWorkers_FullMethodName: func() proto.Message { return &api.ListWorkersResponse{} },
}

// forwardedKey marks a call a follower forwarded, so that it is forwarded
// at most once (no loops while leadership moves).
const forwardedKey = "loom-forwarded-by"

// forwarder relays write calls from a follower to the leader over cached
// gRPC connections.
type forwarder struct {
	s     *Server
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(s *Server) *forwarder {
	return &forwarder{s: s, conns: map[string]*grpc.ClientConn{}}
}

// unaryInterceptor serves writes on the leader, forwards them from a
// follower (waiting up to LeaderWait for an election), and translates every
// handler error to a gRPC status.
func (f *forwarder) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod == api.Coordinator_RegisterWorker_FullMethodName && f.s.tokens.enabled() {
		if err := f.s.tokens.check(ctx); err != nil {
			return nil, err
		}
	}
	if newReply, ok := leaderReads[info.FullMethod]; ok && !f.s.IsLeader() {
		if resp, err := f.forwardRead(ctx, info.FullMethod, req, newReply()); err == nil {
			return resp, nil
		}
	}
	newReply, write := writeMethods[info.FullMethod]
	if !write || f.s.IsLeader() {
		resp, err := handler(ctx, req)
		return resp, toStatus(err)
	}
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedKey)) > 0 {
		return nil, toStatus(fmt.Errorf("%w: %s was forwarded here by %v", ErrNotLeader, f.s.cfg.NodeID, md.Get(forwardedKey)))
	}
	addr, err := f.waitLeaderAddr(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if addr == f.s.Addr() { // became leader while waiting
		resp, err := handler(ctx, req)
		return resp, toStatus(err)
	}
	conn, err := f.conn(addr)
	if err != nil {
		return nil, toStatus(err)
	}
	reply := newReply()
	octx := metadata.AppendToOutgoingContext(ctx, forwardedKey, f.s.cfg.NodeID)
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(api.JoinTokenHeader)) > 0 {
		octx = metadata.AppendToOutgoingContext(octx, api.JoinTokenHeader, md.Get(api.JoinTokenHeader)[0]) // the leader checks it too
	}
	if err := conn.Invoke(octx, info.FullMethod, req, reply); err != nil {
		return nil, err // already a status from the leader
	}
	return reply, nil
}

// forwardRead sends a leader read to the leader this node knows now,
// without waiting for an election, and not a second time.
func (f *forwarder) forwardRead(ctx context.Context, method string, req any, reply proto.Message) (proto.Message, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedKey)) > 0 {
		return nil, fmt.Errorf("%w: forwarded already", ErrNotLeader)
	}
	_, addr := f.s.Leader()
	if addr == "" || addr == f.s.Addr() {
		return nil, ErrNoLeader
	}
	conn, err := f.conn(addr)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, f.s.cfg.LeaderWait)
	defer cancel()
	if err := conn.Invoke(metadata.AppendToOutgoingContext(cctx, forwardedKey, f.s.cfg.NodeID), method, req, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// waitLeaderAddr returns the leader's gRPC address, waiting up to
// LeaderWait (bounded by ctx) while an election runs.
func (f *forwarder) waitLeaderAddr(ctx context.Context) (string, error) {
	deadline := time.Now().Add(f.s.cfg.LeaderWait)
	for {
		id, addr := f.s.Leader()
		if addr != "" {
			return addr, nil
		}
		if time.Now().After(deadline) {
			if id != "" {
				return "", fmt.Errorf("%w: leader %q has no recorded gRPC address yet", ErrNoLeader, id)
			}
			return "", fmt.Errorf("%w after %v", ErrNoLeader, f.s.cfg.LeaderWait)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, f.s.dialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("dial leader %s: %w", addr, err)
	}
	f.conns[addr] = c
	return c, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, c := range f.conns {
		_ = c.Close()
		delete(f.conns, a)
	}
}
