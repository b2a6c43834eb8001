package coordinator

import (
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/pki"
)

// Config configures one coordinator node. Build it with DefaultConfig and
// check it with Validate (Start does).
type Config struct {
	// NodeID names this node in the Raft configuration; unique per cluster.
	NodeID string
	// ClusterID names the cluster. Bootstrap records it; Join must match it.
	ClusterID string
	// DataDir holds the raft-boltdb log and the snapshots. Empty keeps
	// everything in memory (embedded mode and tests): nothing survives a
	// restart.
	DataDir string
	// RaftAddr is the host:port the Raft TCP transport binds and advertises
	// (port 0 picks a free one).
	RaftAddr string
	// GRPCAddr is the host:port the gRPC API binds (port 0 picks one).
	GRPCAddr string
	// GRPCAdvertise and RaftAdvertise are the addresses other coordinators,
	// workers and clients dial (a host, or host:port): empty means the
	// bound address, or the host's first routable address when bound to
	// every interface (internal/netaddr).
	GRPCAdvertise, RaftAdvertise string
	// JoinToken and JoinTokenFile, if either is set, are what a worker
	// must present to register (jointoken.go): the token, and the tokens
	// listed in the file, re-read when it changes. Every coordinator of a
	// cluster needs the same ones. Empty: anyone who reaches the gRPC
	// address may register a worker.
	JoinToken, JoinTokenFile string
	// TLS, if set, is this node's certificate (a coordinator's) and the
	// cluster's CA: the gRPC API, Raft and this node's calls to other
	// coordinators are then mutual TLS, and each call is admitted by the
	// role of the caller's certificate (tls.go). Every coordinator of a
	// cluster needs one; nil is plain text, for one machine.
	TLS *pki.Identity
	// Bootstrap makes this node the first voter of a new cluster. Ignored if
	// DataDir already holds Raft state.
	Bootstrap bool
	// Join lists gRPC addresses of existing coordinators to join through.
	// Ignored if DataDir already holds Raft state.
	Join []string
	// Discovery is an optional "etcd://host:port[,host:port]/prefix" under
	// which the node publishes itself and, while leader, the leader key.
	Discovery string

	// LeaseTTL is how long a worker stays registered without a heartbeat,
	// and the grace every worker gets from a new leader (lease.go).
	LeaseTTL time.Duration
	// FailureConfirm: when a rank reports its generation failed, each of
	// the generation's workers whose heartbeats have stopped this long is
	// removed as lost without waiting for its lease (see failure.go).
	// Workers heartbeat four times per window.
	FailureConfirm time.Duration
	// ReplanInterval bounds how long the leader waits between planning
	// passes when nothing changes (speed drift is picked up then).
	ReplanInterval time.Duration
	// ReplanTolerance is the fraction a batch share may drift before a new
	// generation is published for speed alone (measured against the smaller
	// of the old and new shares, so about the step-time excess of the most
	// overloaded rank). 0.1: a worker and a half-speed one at batch 1024 left
	// 15% drift in place at 0.2 (the fast one idle a fifth of each step);
	// over 5 paired runs 0.1 gave a median of 26.6k samples/s against 25.1k.
	ReplanTolerance float64
	// SpeedReplanMinAge is how long a plan stands before the leader replaces
	// it for speed alone (membership changes are never held back): the
	// measured speeds of workers sharing cores swing from second to second,
	// and 4 equal workers on 2 cores went through 7 generations in a 4 s
	// epoch without it.
	SpeedReplanMinAge time.Duration
	// FineReplanTolerance is a smaller drift that re-plans for speed once
	// the plan is FineReplanMinAge old: a standing imbalance under
	// ReplanTolerance (a half-speed pair at batch 2048 kept shares 8% off
	// for a whole job, the fast worker idle a tenth of every step) is
	// corrected within FineReplanMinAge, while the noise of measured speeds
	// churns at most one generation per FineReplanMinAge. 0 turns it off.
	FineReplanTolerance float64
	FineReplanMinAge    time.Duration
	// ProgressInterval: the leader writes the step reports of an interval
	// as one batch entry, the newest report of each worker (progress.go);
	// final and evaluation reports and a worker's first measured speed are
	// written at once. 0 writes every report as its own entry.
	ProgressInterval time.Duration
	// ApplyTimeout bounds one Raft write on the leader.
	ApplyTimeout time.Duration
	// FollowerReadWait: a follower asked about a job it does not know yet
	// (a client wrote through another node a moment ago) waits this long
	// for replication before answering UNKNOWN_JOB. The leader answers at
	// once.
	FollowerReadWait time.Duration
	// LeaderWait is how long a write waits for a leader to be elected
	// before it is refused with NO_LEADER.
	LeaderWait time.Duration

	// Raft timing. Lower values fail over faster and cost more traffic.
	RaftHeartbeatTimeout time.Duration
	RaftElectionTimeout  time.Duration
	RaftLeaderLease      time.Duration
	SnapshotThreshold    uint64
	SnapshotInterval     time.Duration

	// Logger receives everything the node logs; nil logs nothing.
	Logger *zap.Logger
}

// DefaultConfig returns a single-node, in-memory configuration on loopback
// with random ports. Tuned for LANs: leader loss is detected in about
// 0.5–1 s.
func DefaultConfig() Config {
	return Config{
		NodeID:               "coord-0",
		ClusterID:            "loom",
		RaftAddr:             "127.0.0.1:0",
		GRPCAddr:             "127.0.0.1:0",
		LeaseTTL:             10 * time.Second,
		FailureConfirm:       time.Second,
		ReplanInterval:       5 * time.Second,
		ReplanTolerance:      0.1,
		SpeedReplanMinAge:    2 * time.Second,
		FineReplanTolerance:  0.03,
		FineReplanMinAge:     10 * time.Second,
		ProgressInterval:     time.Second,
		ApplyTimeout:         5 * time.Second,
		LeaderWait:           3 * time.Second,
		FollowerReadWait:     time.Second,
		RaftHeartbeatTimeout: 500 * time.Millisecond,
		RaftElectionTimeout:  500 * time.Millisecond,
		RaftLeaderLease:      250 * time.Millisecond,
		SnapshotThreshold:    8192,
		SnapshotInterval:     30 * time.Second,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if c.NodeID == "" {
		bad("coordinator: NodeID is empty")
	}
	if c.ClusterID == "" {
		bad("coordinator: ClusterID is empty")
	}
	for name, a := range map[string]string{"RaftAddr": c.RaftAddr, "GRPCAddr": c.GRPCAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad("coordinator: %s %q: %v", name, a, err)
		}
	}
	if c.Bootstrap && len(c.Join) > 0 {
		bad("coordinator: Bootstrap and Join are exclusive")
	}
	for name, d := range map[string]time.Duration{
		"LeaseTTL": c.LeaseTTL, "FailureConfirm": c.FailureConfirm, "ReplanInterval": c.ReplanInterval, "ApplyTimeout": c.ApplyTimeout,
		"LeaderWait": c.LeaderWait, "RaftHeartbeatTimeout": c.RaftHeartbeatTimeout,
		"RaftElectionTimeout": c.RaftElectionTimeout, "RaftLeaderLease": c.RaftLeaderLease,
		"SnapshotInterval": c.SnapshotInterval,
	} {
		if d <= 0 {
			bad("coordinator: %s must be > 0, got %v", name, d)
		}
	}
	if c.FollowerReadWait < 0 {
		bad("coordinator: FollowerReadWait must be >= 0")
	}
	if c.ProgressInterval < 0 {
		bad("coordinator: ProgressInterval must be >= 0")
	}
	if c.ReplanTolerance < 0 {
		bad("coordinator: ReplanTolerance must be >= 0")
	}
	if c.SpeedReplanMinAge < 0 || c.FineReplanMinAge < 0 {
		bad("coordinator: SpeedReplanMinAge and FineReplanMinAge must be >= 0")
	}
	if c.FineReplanTolerance < 0 || c.FineReplanTolerance > c.ReplanTolerance {
		bad("coordinator: FineReplanTolerance %g must be in [0, ReplanTolerance %g]", c.FineReplanTolerance, c.ReplanTolerance)
	}
	if c.RaftLeaderLease > c.RaftHeartbeatTimeout {
		bad("coordinator: RaftLeaderLease %v exceeds RaftHeartbeatTimeout %v", c.RaftLeaderLease, c.RaftHeartbeatTimeout)
	}
	if c.Discovery != "" {
		if _, _, err := api.ParseDiscovery(c.Discovery); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
