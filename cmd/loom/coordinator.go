package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/pki"
)

func newCoordinatorCmd() *cobra.Command {
	cfg := coordinator.DefaultConfig()
	cfg.NodeID = ""
	cfg.RaftAddr, cfg.GRPCAddr = "127.0.0.1:7071", "127.0.0.1:7070"
	var join, level, httpAddr, metricsAddr string
	var tls tlsFiles
	cmd := &cobra.Command{
		Use:   "coordinator --id ID --data-dir DIR (--bootstrap | --join ADDR)",
		Short: "Run one node of a Raft-replicated coordinator cluster",
		Long: `Runs one coordinator node. Three nodes survive the loss of any one: the
first starts with --bootstrap, the others with --join pointing at any running
node. A node restarted on the same --data-dir rejoins with its old identity
and needs neither flag. With --discovery, nodes publish themselves and the
current leader in etcd, and a new node with neither flag joins through it.

With --tls-ca, --tls-cert and --tls-key (a coordinator certificate from loom
certs) the API, Raft and this node's calls to other coordinators are mutual
TLS, and each API call is admitted by the role of the caller's certificate
(docs/security.md). Without them everything is plain text, for one machine;
bound beyond loopback, it warns. /healthz and /readyz answer probes over plain
HTTP on --metrics-addr and --http-addr.`,
		Example: `  loom coordinator --id c1 --data-dir /var/lib/loom/c1 --raft-addr 10.0.0.1:7071 --grpc-addr 10.0.0.1:7070 --bootstrap
  loom coordinator --id c2 --data-dir /var/lib/loom/c2 --raft-addr 10.0.0.2:7071 --grpc-addr 10.0.0.2:7070 --join 10.0.0.1:7070
  loom coordinator members --coordinator 10.0.0.1:7070
  loom coordinator remove c3 --coordinator 10.0.0.1:7070`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lvl, err := zapcore.ParseLevel(level)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := newLogger(lvl)
			defer func() { _ = log.Sync() }()
			cfg.Logger = log
			if join != "" {
				cfg.Join = strings.Split(join, ",")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfg.DataDir == "" {
				return fmt.Errorf("--data-dir is required: a cluster node must keep its raft log")
			}
			if cfg.TLS, err = tls.load(pki.RoleCoordinator); err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			hl, err := listenCoordinatorHTTP(httpAddr, metricsAddr, log)
			if err != nil {
				return err
			}
			sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			srv, err := coordinator.Start(sctx, cfg)
			cancel()
			if err != nil {
				hl.close()
				return err
			}
			log.Info("serving", zap.String("id", cfg.NodeID), zap.String("grpc", srv.Addr()), zap.String("raft", srv.RaftAddr()))
			if w := plainTextWarning(cfg.TLS, cfg.GRPCAddr, cfg.RaftAddr); w != "" {
				log.Warn(w)
			}
			if cfg.JoinToken == "" && cfg.JoinTokenFile == "" && !loopbackOnly(cfg.GRPCAddr) {
				log.Warn("workers register without a join token: anyone who reaches this address can join a job; set --join-token-file", zap.String("grpc", cfg.GRPCAddr))
			}
			defer hl.serve(srv)()
			<-ctx.Done()
			log.Info("shutting down")
			return srv.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeID, "id", "", "node id, unique in the cluster (required)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the raft log and snapshots (required)")
	f.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "host:port for raft traffic between coordinators")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "host:port for the gRPC API (workers, CLI, other coordinators) to bind; 0.0.0.0:PORT binds every interface")
	f.StringVar(&cfg.GRPCAdvertise, "grpc-advertise", os.Getenv("LOOM_GRPC_ADVERTISE"), "host[:port] others dial for the gRPC API (env LOOM_GRPC_ADVERTISE; default: the bound address, or the host's first routable address when bound to 0.0.0.0)")
	f.StringVar(&cfg.JoinToken, "join-token", os.Getenv("LOOM_JOIN_TOKEN"), "require workers to present this token to register (env LOOM_JOIN_TOKEN; a flag value shows in ps)")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", "", "require a token listed in this file (one per line, re-read when it changes: add a new token, move workers to it, remove the old)")
	f.StringVar(&cfg.RaftAdvertise, "raft-advertise", os.Getenv("LOOM_RAFT_ADVERTISE"), "host[:port] other coordinators dial for Raft (env LOOM_RAFT_ADVERTISE; default as for --grpc-advertise)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "host:port for Prometheus /metrics alone (Raft term, commit and applied index, leadership, lease expiries, failure reports, workers and jobs by state, per-job step, generation, loss, samples/s, checkpoints); empty: off")
	f.StringVar(&httpAddr, "http-addr", "", "host:port for the status web page (jobs, loss and throughput plots, plans, events) and Prometheus /metrics; empty: off")
	f.BoolVar(&cfg.Bootstrap, "bootstrap", false, "start a new cluster with this node as its first member")
	tls.flags(cmd)
	f.StringVar(&join, "join", "", "gRPC address(es) of running coordinators to join, comma-separated")
	f.StringVar(&cfg.ClusterID, "cluster-id", cfg.ClusterID, "cluster name; a node cannot join a cluster with another id")
	f.StringVar(&cfg.Discovery, "discovery", "", "publish this node and the leader in etcd: etcd://host:port/prefix")
	f.DurationVar(&cfg.LeaseTTL, "lease", cfg.LeaseTTL, "worker lease: a worker silent this long is removed and its job re-planned (the backstop of --failure-confirm)")
	f.DurationVar(&cfg.FailureConfirm, "failure-confirm", cfg.FailureConfirm, "when a rank reports its generation failed, a worker of it whose heartbeats have stopped this long is removed at once (workers heartbeat 4 times per window)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("id")
	cmd.MarkFlagsMutuallyExclusive("bootstrap", "join")
	cmd.AddCommand(newCoordinatorMembersCmd(), newCoordinatorRemoveCmd())
	return cmd
}

func newCoordinatorMembersCmd() *cobra.Command {
	var t coordTarget
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the coordinator nodes, their addresses and the leader",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				st, err := c.cluster.ClusterStatus(ctx, &api.ClusterStatusRequest{})
				if err != nil {
					return err
				}
				printMembers(cmd.OutOrStdout(), st)
				return nil
			})
		},
	}
	t.flags(cmd)
	return cmd
}

func newCoordinatorRemoveCmd() *cobra.Command {
	var t coordTarget
	cmd := &cobra.Command{
		Use:   "remove NODE_ID",
		Short: "Remove a coordinator node from the cluster's raft membership",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				if _, err := c.cluster.RemoveCoordinator(ctx, &api.RemoveCoordinatorRequest{NodeId: args[0]}); err != nil {
					return fmt.Errorf("remove %s: %w", args[0], err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
				return nil
			})
		},
	}
	t.flags(cmd)
	return cmd
}

// loopbackOnly reports whether addr binds only this host's loopback.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
