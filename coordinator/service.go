package coordinator

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
)

// service implements api.CoordinatorServer. Write handlers run on the
// leader only (the forwarder sees to it) and write through Server.apply;
// read handlers answer from this node's replica. Handlers return internal
// errors; the interceptor turns them into gRPC statuses.
type service struct {
	api.UnimplementedCoordinatorServer
	s *Server
}

func (v *service) SubmitJob(ctx context.Context, req *api.SubmitJobRequest) (*api.SubmitJobResponse, error) {
	if err := validateSpec(req.GetSpec()); err != nil {
		return nil, err
	}
	m, _, err := v.s.apply(ctx, &api.CmdSubmitJob{Spec: req.GetSpec(), NowUnixNano: time.Now().UnixNano(), RequestId: req.GetRequestId()})
	if err != nil {
		return nil, err
	}
	return &api.SubmitJobResponse{Job: m.(*api.Job)}, nil
}

func (v *service) GetJob(ctx context.Context, req *api.GetJobRequest) (*api.GetJobResponse, error) {
	j, ok := v.s.awaitJob(ctx, req.GetJobId())
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, req.GetJobId())
	}
	p, _ := v.s.fsm.Plan(j.GetId())
	return &api.GetJobResponse{Job: j, Plan: p}, nil
}

// ListEvents returns a job's events (every event for an empty job id).
func (v *service) ListEvents(ctx context.Context, req *api.ListEventsRequest) (*api.ListEventsResponse, error) {
	if id := req.GetJobId(); id != "" {
		if _, ok := v.s.awaitJob(ctx, id); !ok {
			return nil, fmt.Errorf("%w: %q", ErrUnknownJob, id)
		}
	}
	es, dropped := v.s.fsm.Events(req.GetJobId(), req.GetAfterIndex())
	return &api.ListEventsResponse{Events: es, Dropped: dropped}, nil
}

// GetJobHistory returns a job's progress history.
func (v *service) GetJobHistory(ctx context.Context, req *api.GetJobHistoryRequest) (*api.GetJobHistoryResponse, error) {
	if _, ok := v.s.awaitJob(ctx, req.GetJobId()); !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, req.GetJobId())
	}
	return &api.GetJobHistoryResponse{History: v.s.fsm.History(req.GetJobId())}, nil
}

// awaitJob returns job id from this node's replica. On a follower that does
// not know it yet it waits up to FollowerReadWait (bounded by ctx) for
// replication, so that a client may write through one node and read
// through another.
func (s *Server) awaitJob(ctx context.Context, id string) (*api.Job, bool) {
	deadline := time.NewTimer(s.cfg.FollowerReadWait)
	defer deadline.Stop()
	for {
		ch := s.fsm.Changed()
		if j, ok := s.fsm.Job(id); ok || s.IsLeader() {
			return j, ok
		}
		select {
		case <-ch:
		case <-deadline.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		case <-s.closing():
			return nil, false
		}
	}
}

func (v *service) ListJobs(context.Context, *api.ListJobsRequest) (*api.ListJobsResponse, error) {
	return &api.ListJobsResponse{Jobs: v.s.fsm.Jobs()}, nil
}

func (v *service) CancelJob(ctx context.Context, req *api.CancelJobRequest) (*api.CancelJobResponse, error) {
	reason := req.GetReason()
	if reason == "" {
		reason = "cancelled by request"
	}
	m, _, err := v.s.apply(ctx, &api.CmdCancelJob{JobId: req.GetJobId(), Reason: reason})
	if err != nil {
		return nil, err
	}
	return &api.CancelJobResponse{Job: m.(*api.Job)}, nil
}

func (v *service) RegisterWorker(ctx context.Context, req *api.RegisterWorkerRequest) (*api.RegisterWorkerResponse, error) {
	if req.GetWorkerId() == "" {
		return nil, fmt.Errorf("%w: worker id is empty", ErrInvalidArgument)
	}
	if req.GetProfile().GetCollectiveAddr() == "" {
		return nil, fmt.Errorf("%w: worker %q: profile.collective_addr is empty", ErrInvalidArgument, req.GetWorkerId())
	}
	now := time.Now()
	w := &api.Worker{
		Id: req.GetWorkerId(), Profile: req.GetProfile(), JobId: req.GetJobId(),
		LeaseExpiryUnixNano: now.Add(v.s.cfg.LeaseTTL).UnixNano(), RegisteredUnixNano: now.UnixNano(),
	}
	// The lease starts before the entry applies, so that the leader's
	// expiry pass, which may run between the two, never finds the new
	// registration without one. A refused registration gives the id back
	// the lease it had: it must not keep a dead holder of the id alive.
	prev := v.s.live.swap(w.GetId(), now)
	m, idx, err := v.s.apply(ctx, &api.CmdRegisterWorker{Worker: w})
	if err != nil {
		if idx != 0 { // the log refused it; a Raft error may leave it applied
			v.s.live.restore(w.GetId(), prev, now)
		}
		return nil, err
	}
	reg := m.(*api.Worker)
	v.s.live.saw(reg.GetId(), time.Now())
	return &api.RegisterWorkerResponse{
		Worker:              reg,
		HeartbeatIntervalMs: v.s.cfg.HeartbeatInterval().Milliseconds(),
		LeaseMs:             v.s.cfg.LeaseTTL.Milliseconds(),
	}, nil
}

// Heartbeat renews the worker's lease in the leader's memory (lease.go):
// no Raft entry.
func (v *service) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	return v.s.heartbeat(ctx, req)
}

func (v *service) ReportFailure(_ context.Context, req *api.ReportFailureRequest) (*api.ReportFailureResponse, error) {
	if err := v.s.noteFailure(req); err != nil {
		return nil, err
	}
	v.s.metrics.failureReports.Add(1)
	return &api.ReportFailureResponse{}, nil
}

func (v *service) DeregisterWorker(ctx context.Context, req *api.DeregisterWorkerRequest) (*api.DeregisterWorkerResponse, error) {
	if _, _, err := v.s.apply(ctx, &api.CmdRemoveWorker{WorkerId: req.GetWorkerId(), Reason: "deregistered", Incarnation: req.GetIncarnation()}); err != nil {
		return nil, err
	}
	return &api.DeregisterWorkerResponse{}, nil
}

// ListWorkers lists the registered workers with their live leases on the
// leader (a follower forwards it there while a leader is known, see
// forward.go) and the recently lost ones.
func (v *service) ListWorkers(context.Context, *api.ListWorkersRequest) (*api.ListWorkersResponse, error) {
	return &api.ListWorkersResponse{Workers: v.s.withLeases(v.s.fsm.Workers()), Lost: v.s.fsm.LostWorkers()}, nil
}

func (v *service) DrainWorker(ctx context.Context, req *api.DrainWorkerRequest) (*api.DrainWorkerResponse, error) {
	m, _, err := v.s.apply(ctx, &api.CmdDrainWorker{WorkerId: req.GetWorkerId()})
	if err != nil {
		return nil, err
	}
	return &api.DrainWorkerResponse{Worker: m.(*api.Worker)}, nil
}

// WatchPlan sends the job's current plan (if newer than after_generation)
// and then every new generation, from this node's replica. It ends with OK
// when the job is cancelled or completed, and with UNAVAILABLE when the node shuts down.
func (v *service) WatchPlan(req *api.WatchPlanRequest, stream api.Coordinator_WatchPlanServer) error {
	return toStatus(v.s.watchPlan(stream.Context(), req, stream.Send))
}

func (s *Server) watchPlan(ctx context.Context, req *api.WatchPlanRequest, send func(*api.Plan) error) error {
	if _, ok := s.awaitJob(ctx, req.GetJobId()); !ok {
		return fmt.Errorf("%w: cannot watch the plan of %q: no such job", ErrUnknownJob, req.GetJobId())
	}
	after := req.GetAfterGeneration()
	for {
		p, ended, next, ok := s.fsm.planView(req.GetJobId())
		if !ok {
			return fmt.Errorf("%w: %q", ErrUnknownJob, req.GetJobId())
		}
		if p.GetGeneration() > after {
			if err := send(p); err != nil {
				return err
			}
			after = p.GetGeneration()
		}
		if ended {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing():
			return fmt.Errorf("%w: plan watch ends", ErrShuttingDown)
		case <-next:
		}
	}
}

// ReportProgress checks a step report and records it (progress.go).
func (v *service) ReportProgress(ctx context.Context, req *api.ReportProgressRequest) (*api.ReportProgressResponse, error) {
	return v.s.reportProgress(ctx, req)
}

func (v *service) CommitCheckpoint(ctx context.Context, req *api.CommitCheckpointRequest) (*api.CommitCheckpointResponse, error) {
	ck := req.GetCheckpoint()
	if ck == nil {
		return nil, fmt.Errorf("%w: checkpoint is missing", ErrInvalidArgument)
	}
	if req.GetFailure() == "" { // a record names where the checkpoint is: its job's directory, its step
		job, step, err := checkpoint.ParsePath(ck.GetPath())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
		}
		if int64(step) != ck.GetStep() {
			return nil, fmt.Errorf("%w: checkpoint path %q is step %d, the record says step %d", ErrInvalidArgument, ck.GetPath(), step, ck.GetStep())
		}
		if j, ok := v.s.fsm.Job(ck.GetJobId()); ok && j.GetSpec().GetName() != job {
			return nil, fmt.Errorf("%w: checkpoint path %q is not in job %s's directory %q", ErrInvalidArgument, ck.GetPath(), ck.GetJobId(), j.GetSpec().GetName())
		}
	}
	m, _, err := v.s.apply(ctx, &api.CmdCommitCheckpoint{Checkpoint: req.GetCheckpoint(), NowUnixNano: time.Now().UnixNano(), Failure: req.GetFailure()})
	if err != nil {
		return nil, err
	}
	return &api.CommitCheckpointResponse{Job: m.(*api.Job)}, nil
}

// clusterService implements api.ClusterServer.
type clusterService struct {
	api.UnimplementedClusterServer
	s *Server
}

func (c *clusterService) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	if err := c.s.addMember(ctx, req); err != nil {
		return nil, err
	}
	return &api.JoinResponse{ClusterId: c.s.fsm.ClusterID()}, nil
}

func (c *clusterService) RemoveCoordinator(ctx context.Context, req *api.RemoveCoordinatorRequest) (*api.RemoveCoordinatorResponse, error) {
	if err := c.s.removeMember(ctx, req.GetNodeId()); err != nil {
		return nil, err
	}
	return &api.RemoveCoordinatorResponse{}, nil
}

func (c *clusterService) ClusterStatus(context.Context, *api.ClusterStatusRequest) (*api.ClusterStatusResponse, error) {
	return c.s.Status(), nil
}

// Status describes the cluster as this node sees it.
func (s *Server) Status() *api.ClusterStatusResponse {
	lid, laddr := s.Leader()
	out := &api.ClusterStatusResponse{
		ClusterId: s.fsm.ClusterID(), LeaderId: lid, LeaderGrpcAddr: laddr, NodeId: s.cfg.NodeID,
		AppliedIndex: s.fsm.AppliedIndex(), RaftState: s.raft.State().String(),
	}
	recorded := map[string]*api.CoordinatorMember{}
	for _, c := range s.fsm.Coordinators() {
		recorded[c.GetId()] = c
	}
	if cf := s.raft.GetConfiguration(); cf.Error() == nil {
		for _, srv := range cf.Configuration().Servers {
			m := &api.CoordinatorMember{Id: string(srv.ID), RaftAddr: string(srv.Address)}
			if r, ok := recorded[m.Id]; ok {
				m = proto.CloneOf(r)
				delete(recorded, m.Id)
			}
			m.Suffrage = map[bool]string{true: "voter", false: "nonvoter"}[srv.Suffrage == raft.Voter]
			m.Leader = m.Id == lid
			out.Members = append(out.Members, m)
		}
	}
	for _, k := range sortedKeys(recorded) {
		out.Members = append(out.Members, recorded[k])
	}
	return out
}
