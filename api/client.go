package api

// What a client or server needs beyond the generated code: the error
// reasons carried in gRPC status details, and a dialer over every
// coordinator address.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
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
	ReasonSuperseded        = "SUPERSEDED"
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

// JoinTokenHeader is the request metadata key under which a worker presents
// its join token to RegisterWorker.
const JoinTokenHeader = "loom-join-token"

// WithJoinToken returns ctx carrying token for RegisterWorker (ctx as is
// when token is empty). Surrounding whitespace, such as a token file's
// newline, is not part of a token.
func WithJoinToken(ctx context.Context, token string) context.Context {
	if token = strings.TrimSpace(token); token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, JoinTokenHeader, token)
}

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

// retryServiceConfig balances over every coordinator address and retries a
// call that failed with UNAVAILABLE (a node died or is electing) on another
// address with backoff, for about 5 s in all. A write may be retried after
// the node it went to died mid-call: registration and checkpoint commits are
// idempotent, heartbeats and progress reports harmless to repeat, and a
// submit is idempotent when it carries a request_id.
const retryServiceConfig = `{
  "loadBalancingConfig": [{"round_robin":{}}],
  "methodConfig": [{
    "name": [{"service": "loom.v1.Coordinator"}, {"service": "loom.v1.Cluster"}],
    "waitForReady": true,
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2.5,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

var schemeSeq atomic.Uint64

// Keepalive. Without it a connection to a coordinator whose link was cut
// looks healthy until TCP gives up (minutes), and the calls the balancer
// sends there hang for their whole deadline: a worker's heartbeats stalled
// for 10 s, as long as its lease. With it, gRPC also sets TCP_USER_TIMEOUT
// to keepaliveTimeout, so a call written into a dead link fails after about
// that long (and is retried on another coordinator); an idle connection is
// pinged after keepaliveTime (gRPC's floor: shorter values are raised to
// 10 s) and dropped when the ping is not answered within keepaliveTimeout.
// Servers must allow pings this often (ServerKeepalive).
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = time.Second
)

// ClientKeepalive is the keepalive every loom client connection uses
// (Dial adds it).
func ClientKeepalive() grpc.DialOption {
	return grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true})
}

// ServerKeepalive lets clients ping as often as ClientKeepalive does (the
// gRPC default refuses pings more often than every 5 minutes and closes
// such a connection with "too many pings").
func ServerKeepalive() grpc.ServerOption {
	return grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveTime / 2, PermitWithoutStream: true})
}

// Dial opens one client connection spread over every coordinator address in
// addrs ("host:port", or one comma-separated string). Any coordinator
// answers: followers forward writes to the leader. Calls wait for a ready
// connection up to their context deadline, so callers must set one.
// Extra options are appended (e.g. TLS credentials replace insecure ones).
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	var list []string
	for _, a := range addrs {
		for _, p := range strings.Split(a, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
	}
	if len(list) == 0 {
		return nil, errors.New("api: no coordinator address given")
	}
	// A private scheme per connection: the manual resolver is registered on
	// the connection only, never globally.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("loom%d", schemeSeq.Add(1)))
	state := resolver.State{}
	for _, a := range list {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(retryServiceConfig),
		ClientKeepalive(),
	}, opts...)
	return grpc.NewClient(r.Scheme()+":///coordinators", all...)
}
