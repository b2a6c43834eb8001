package coordinator

import (
	"context"
	"errors"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
)

// Sentinel errors of the coordinator. Everything inside the package returns
// these, wrapped with %w and detail; toStatus translates them to gRPC
// statuses with an api.Reason* only at the gRPC edge.
var (
	ErrInvalidArgument   = errors.New("invalid argument")
	ErrUnknownJob        = errors.New("unknown job")
	ErrJobCancelled      = errors.New("job cancelled")
	ErrJobCompleted      = errors.New("job completed")
	ErrUnknownWorker     = errors.New("unknown worker")
	ErrSuperseded        = errors.New("worker registration superseded")
	ErrStaleGeneration   = errors.New("stale plan generation")
	ErrNotInPlan         = errors.New("worker not in the job's plan")
	ErrStaleCheckpoint   = errors.New("checkpoint older than the newest committed one")
	ErrNotLeader         = errors.New("not the raft leader")
	ErrNoLeader          = errors.New("no raft leader known")
	ErrClusterIDMismatch = errors.New("cluster id mismatch")
	ErrUnknownNode       = errors.New("unknown coordinator node")
	ErrShuttingDown      = errors.New("coordinator shutting down")
	ErrUnknownCommand    = errors.New("unknown raft command type")
)

var errTable = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{ErrInvalidArgument, codes.InvalidArgument, api.ReasonInvalidArgument},
	{ErrUnknownJob, codes.NotFound, api.ReasonUnknownJob},
	{ErrJobCancelled, codes.FailedPrecondition, api.ReasonJobCancelled},
	{ErrJobCompleted, codes.FailedPrecondition, api.ReasonJobCompleted},
	{ErrUnknownWorker, codes.NotFound, api.ReasonUnknownWorker},
	{ErrSuperseded, codes.FailedPrecondition, api.ReasonSuperseded},
	{ErrStaleGeneration, codes.FailedPrecondition, api.ReasonStaleGeneration},
	{ErrNotInPlan, codes.FailedPrecondition, api.ReasonNotInPlan},
	{ErrStaleCheckpoint, codes.FailedPrecondition, api.ReasonStaleCheckpoint},
	{ErrNotLeader, codes.Unavailable, api.ReasonNotLeader},
	{ErrNoLeader, codes.Unavailable, api.ReasonNoLeader},
	{ErrClusterIDMismatch, codes.FailedPrecondition, api.ReasonClusterIDMismatch},
	{ErrUnknownNode, codes.NotFound, api.ReasonUnknownNode},
	{ErrShuttingDown, codes.Unavailable, api.ReasonShuttingDown},
}

// toStatus translates an internal error to a gRPC status error. Errors that
// already are gRPC statuses (from a forwarded call) pass through unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range errTable {
		if errors.Is(err, e.err) {
			return api.NewError(e.code, e.reason, err.Error(), nil)
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return api.NewError(codes.Unavailable, api.ReasonNotLeader, err.Error(), nil)
	case errors.Is(err, raft.ErrRaftShutdown):
		return api.NewError(codes.Unavailable, api.ReasonShuttingDown, err.Error(), nil)
	}
	return status.Error(codes.Internal, err.Error())
}
