// Package coordinator is loom's control plane: a Raft-replicated state
// machine (hashicorp/raft, raft-boltdb storage, TCP transport) holding jobs,
// registered workers, coordinator members and plan generations, and the
// gRPC API of package api served by every node. Followers forward writes
// (and heartbeats) to the leader and answer reads from their replica. The
// leader alone holds the workers' leases, in memory (lease.go), expires
// them and writes new plan generations, computed by the pure planner in
// coordinator/scheduler.
//
// One node embedded in a process (StartEmbedded) or three or more processes
// (Start with Bootstrap or Join) run the same code.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/netaddr"
	"github.com/loomtrain/loom/internal/pki"
)

// Server is one running coordinator node. All methods are safe for
// concurrent use.
type Server struct {
	cfg Config
	log *zap.Logger
	fsm *FSM

	raft      *raft.Raft
	transport *raft.NetworkTransport
	closers   []func() error // storage, closed after raft

	grpc          *grpc.Server
	lis           net.Listener
	grpcAdvertise string
	health        *health.Server // the grpc.health.v1 service (see watchHealth)
	fwd           *forwarder
	disc          *publisher

	notify <-chan bool // raft leadership changes

	// leaderSince is when this node took office, nil while it does not
	// lead (lease.go). A time.Time, not Unix ns, so that it keeps its
	// monotonic reading: leases are measured against it, and a step of
	// the wall clock (NTP) must neither expire every lease nor extend them.
	leaderSince atomic.Pointer[time.Time]
	officeMu    sync.Mutex
	office      chan struct{} // closed and replaced at each change of leaderSince

	live     *liveness       // heartbeats (the leases) and failure reports (leader)
	progress *progressBuffer // step reports gathered for the next batch entry (leader)

	metrics serverMetrics
	tokens  *joinTokens

	runCtx    context.Context // ends at Close
	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start opens storage, starts Raft and the gRPC API, and bootstraps or joins
// as configured. A new node (no Raft state) with neither Bootstrap nor Join
// joins through the coordinators published under cfg.Discovery. It returns once the node serves gRPC (and, for Join, once
// the leader has added it); it does not wait for a leader otherwise
// (WaitLeader does). ctx bounds the start only.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.With(zap.String("node", cfg.NodeID))
	s := &Server{cfg: cfg, log: log, fsm: NewFSM(log), live: newLiveness(), progress: newProgressBuffer(), health: health.NewServer(),
		tokens: newJoinTokens(cfg.JoinToken, cfg.JoinTokenFile)}
	s.fwd = newForwarder(s)
	runCtx, stop := context.WithCancel(context.Background())
	s.runCtx, s.stop = runCtx, stop
	ok := false
	defer func() {
		if !ok {
			_ = s.Close()
		}
	}()
	existing, err := s.startRaft()
	if err != nil {
		return nil, err
	}
	if err := s.startGRPC(); err != nil {
		return nil, err
	}

	if cfg.Discovery != "" {
		p, err := startPublisher(runCtx, s)
		if err != nil {
			return nil, err
		}
		s.disc = p
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.watchLeadership(runCtx) }()
	go func() { defer s.wg.Done(); s.watchHealth(runCtx) }()
	if !existing && !cfg.Bootstrap && len(cfg.Join) == 0 && cfg.Discovery != "" {
		// A new node with neither flag joins through the coordinators
		// published in etcd.
		_, addrs, err := api.Discover(ctx, cfg.Discovery)
		if err != nil {
			return nil, fmt.Errorf("coordinator: no --bootstrap or --join, and %w", err)
		}
		cfg.Join = addrs
		s.cfg.Join = addrs
	}
	if !existing && !cfg.Bootstrap && len(cfg.Join) == 0 {
		return nil, fmt.Errorf("coordinator: %w: no raft state in %q and neither Bootstrap nor Join: a new node must start a cluster or join one", ErrInvalidArgument, cfg.DataDir)
	}
	if cfg.Bootstrap && !existing {
		f := s.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: raft.ServerID(cfg.NodeID), Address: s.transport.LocalAddr(),
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("coordinator: bootstrap: %w", err)
		}
	}
	if len(cfg.Join) > 0 && !existing {
		if err := s.join(ctx); err != nil {
			return nil, err
		}
	}
	ok = true
	log.Info("coordinator started", zap.String("grpc", s.Addr()), zap.String("raft", s.RaftAddr()),
		zap.Bool("existing_state", existing), zap.String("data_dir", cfg.DataDir))
	return s, nil
}

// startRaft opens the stores and the transport and starts Raft. It reports
// whether the stores already held Raft state (a restart).
func (s *Server) startRaft() (bool, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.NodeID)
	rc.HeartbeatTimeout = s.cfg.RaftHeartbeatTimeout
	rc.ElectionTimeout = s.cfg.RaftElectionTimeout
	rc.LeaderLeaseTimeout = s.cfg.RaftLeaderLease
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	rc.SnapshotInterval = s.cfg.SnapshotInterval
	rc.Logger = newHCLogger(s.log)
	notify := make(chan bool, 16)
	rc.NotifyCh = notify
	s.notify = notify

	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if s.cfg.DataDir == "" {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(s.cfg.DataDir, 0o755); err != nil {
			return false, fmt.Errorf("coordinator: data dir: %w", err)
		}
		bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(s.cfg.DataDir, "raft.db")})
		if err != nil {
			return false, fmt.Errorf("coordinator: open raft log %s: %w", s.cfg.DataDir, err)
		}
		s.closers = append(s.closers, bolt.Close)
		fs, err := raft.NewFileSnapshotStoreWithLogger(s.cfg.DataDir, 2, rc.Logger)
		if err != nil {
			return false, fmt.Errorf("coordinator: snapshot store: %w", err)
		}
		logs, stable, snaps = bolt, bolt, fs
	}
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return false, fmt.Errorf("coordinator: read raft state: %w", err)
	}
	addr, err := net.ResolveTCPAddr("tcp", s.cfg.RaftAddr)
	if err != nil {
		return false, fmt.Errorf("coordinator: raft address: %w", err)
	}
	var advertise net.Addr
	switch {
	case s.cfg.RaftAdvertise != "" || addr.IP.IsUnspecified():
		if addr.Port == 0 {
			return false, fmt.Errorf("coordinator: raft address %s: give a port when binding every interface or advertising another address (the transport must know it before it binds)", s.cfg.RaftAddr)
		}
		a, err := netaddr.Advertise(addr, s.cfg.RaftAdvertise)
		if err != nil {
			return false, fmt.Errorf("coordinator: raft advertise address: %w", err)
		}
		if advertise, err = net.ResolveTCPAddr("tcp", a); err != nil {
			return false, fmt.Errorf("coordinator: raft advertise address %s: %w", a, err)
		}
	case addr.Port != 0:
		advertise = addr
	}
	var tr *raft.NetworkTransport
	if s.cfg.TLS != nil {
		stream, err := newTLSStream(s.cfg.RaftAddr, advertise, s.cfg.TLS.Config(pki.RoleCoordinator))
		if err != nil {
			return false, fmt.Errorf("coordinator: raft transport on %s: %w", s.cfg.RaftAddr, err)
		}
		tr = raft.NewNetworkTransportWithLogger(stream, 3, 2*time.Second, rc.Logger)
	} else if tr, err = raft.NewTCPTransportWithLogger(s.cfg.RaftAddr, advertise, 3, 2*time.Second, rc.Logger); err != nil {
		return false, fmt.Errorf("coordinator: raft transport on %s: %w", s.cfg.RaftAddr, err)
	}
	s.transport = tr
	r, err := raft.NewRaft(rc, s.fsm, logs, stable, snaps, tr)
	if err != nil {
		return false, fmt.Errorf("coordinator: start raft: %w", err)
	}
	s.raft = r
	return existing, nil
}

func (s *Server) startGRPC() error {
	lis, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("coordinator: grpc listen %s: %w", s.cfg.GRPCAddr, err)
	}
	if s.grpcAdvertise, err = netaddr.Advertise(lis.Addr(), s.cfg.GRPCAdvertise); err != nil {
		_ = lis.Close()
		return fmt.Errorf("coordinator: grpc advertise address: %w", err)
	}
	s.lis = lis
	s.grpc = grpc.NewServer(s.serverOptions()...)
	svc := &service{s: s}
	api.RegisterCoordinatorServer(s.grpc, svc)
	api.RegisterClusterServer(s.grpc, &clusterService{s: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	go func() { _ = s.grpc.Serve(lis) }()
	return nil
}

// closing is closed when Close begins.
func (s *Server) closing() <-chan struct{} { return s.runCtx.Done() }

// ID is this node's id.
func (s *Server) ID() string { return s.cfg.NodeID }

// Addr is the gRPC address clients dial (the advertise address).
func (s *Server) Addr() string { return s.grpcAdvertise }

// RaftAddr is the Raft transport's address.
func (s *Server) RaftAddr() string { return string(s.transport.LocalAddr()) }

// FSM gives read access to this node's replica of the state.
func (s *Server) FSM() *FSM { return s.fsm }

// IsLeader reports whether this node is the Raft leader now.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's node id and gRPC address as this node knows
// them; empty when unknown.
func (s *Server) Leader() (id, grpcAddr string) {
	_, lid := s.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	if string(lid) == s.cfg.NodeID {
		return s.cfg.NodeID, s.Addr()
	}
	for _, c := range s.fsm.Coordinators() {
		if c.GetId() == string(lid) {
			return c.GetId(), c.GetGrpcAddr()
		}
	}
	return string(lid), ""
}

// WaitLeader blocks until some node is the known leader, or ctx ends.
func (s *Server) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := s.Leader(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("coordinator %s: %w: %w", s.cfg.NodeID, ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}

// apply is the only way the leader writes: it encodes cmd, appends it to
// the Raft log and waits until it is applied locally. It returns the FSM's
// result message, the entry's index, and the FSM's refusal or a Raft error.
// Callers on a follower get ErrNotLeader.
func (s *Server) apply(ctx context.Context, cmd proto.Message) (proto.Message, uint64, error) {
	b, err := EncodeCommand(cmd)
	if err != nil {
		return nil, 0, err
	}
	timeout := s.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return nil, 0, fmt.Errorf("apply: %w", context.DeadlineExceeded)
	}
	f := s.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, 0, fmt.Errorf("apply: %w", err)
	}
	res, _ := f.Response().(ApplyResult)
	return res.Msg, f.Index(), res.Err
}

// Close leaves the cluster's traffic (not its membership): it stops the
// gRPC server, the leader's loops, discovery and Raft, then closes storage.
// Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		s.stop()
		if s.disc != nil {
			s.disc.close()
		}
		if s.grpc != nil {
			done := make(chan struct{})
			go func() { s.grpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				s.grpc.Stop()
			}
		}
		s.fwd.close()
		if s.raft != nil {
			if err := s.raft.Shutdown().Error(); err != nil {
				errs = append(errs, err)
			}
		}
		s.wg.Wait()
		if s.transport != nil {
			errs = append(errs, s.transport.Close())
		}
		for _, c := range s.closers {
			errs = append(errs, c())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// newHCLogger routes hashicorp/raft's hclog output to zap at warn and above.
func newHCLogger(log *zap.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name: "raft", Level: hclog.Warn, Output: zapWriter{log.Named("raft")},
		DisableTime: true,
	})
}

type zapWriter struct{ log *zap.Logger }

// Write logs one hclog line at warn, except the election a new cluster
// starts with (no leader was ever known): that one is normal, at info.
func (w zapWriter) Write(p []byte) (int, error) {
	msg := string(trimNL(p))
	if strings.Contains(msg, "starting election") && strings.HasSuffix(msg, "last-leader-id=") {
		w.log.Info(msg)
	} else {
		w.log.Warn(msg)
	}
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// StartEmbedded starts a single-node coordinator that bootstraps itself and
// returns once it leads and has recorded the cluster id, so a write right
// after it returns succeeds. This is what `loom launch` runs when no
// --coordinator is given; dial Server.Addr() in the same process or from
// local worker processes. Bootstrap and Join in cfg are overridden. With an
// empty cfg.DataDir the state lives in memory only. Close the server when
// done.
func StartEmbedded(ctx context.Context, cfg Config) (*Server, error) {
	cfg.Bootstrap, cfg.Join = true, nil
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("coordinator: embedded start: %w", err)
	}
	return s, nil
}

// waitReady waits until this node leads, has applied every entry of the
// log (the leader's barrier), and has recorded the cluster id and its own
// addresses.
func (s *Server) waitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.IsLeader() && !s.leaderStart().IsZero() && s.fsm.ClusterID() != "" {
			if _, addr := s.Leader(); addr != "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}
