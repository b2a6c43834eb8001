package api

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every loom error.
const ErrorDomain = "loom"

// Reasons carried in the google.rpc.ErrorInfo detail of a loom gRPC error.
// A client branches on these, never on message text. Append only.
const (
	ReasonInvalidArgument   = "INVALID_ARGUMENT"
	ReasonUnknownJob        = "UNKNOWN_JOB"
	ReasonJobCancelled      = "JOB_CANCELLED"
	ReasonJobCompleted      = "JOB_COMPLETED"
	ReasonUnknownWorker     = "UNKNOWN_WORKER"
	ReasonDuplicateWorker   = "DUPLICATE_WORKER"
	ReasonStaleGeneration   = "STALE_GENERATION"
	ReasonNotInPlan         = "NOT_IN_PLAN"
	ReasonStaleCheckpoint   = "STALE_CHECKPOINT"
	ReasonNotLeader         = "NOT_LEADER"
	ReasonNoLeader          = "NO_LEADER"
	ReasonClusterIDMismatch = "CLUSTER_ID_MISMATCH"
	ReasonUnknownNode       = "UNKNOWN_NODE"
	ReasonShuttingDown      = "SHUTTING_DOWN"
)

// MetadataLeaderAddr is the trailer key under which a coordinator that
// cannot reach the leader names the leader's gRPC address, when known.
const MetadataLeaderAddr = "loom-leader-addr"

// NewError builds a gRPC status error with a loom reason. meta may carry
// detail such as the job id or the expected generation.
func NewError(code codes.Code, reason, msg string, meta map[string]string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason, Metadata: meta}); err == nil {
		st = d
	}
	return st.Err()
}

// ReasonOf returns the loom reason of a gRPC error, or "" if it carries none.
func ReasonOf(err error) string {
	info := ErrorInfoOf(err)
	if info == nil {
		return ""
	}
	return info.GetReason()
}

// ErrorInfoOf returns the loom ErrorInfo detail of a gRPC error, or nil.
func ErrorInfoOf(err error) *errdetails.ErrorInfo {
	if err == nil {
		return nil
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info
		}
	}
	return nil
}
