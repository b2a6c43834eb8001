package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"

	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/internal/pki"
	"github.com/loomtrain/loom/metrics"
	"github.com/loomtrain/loom/worker"
)

func newWorkerCmd() *cobra.Command {
	var (
		coord, job, id, dev, listen, advertise, level, ledger, shmRing, metricsAddr string
		joinToken, joinTokenFile                                                    string
		tls                                                                         tlsFiles
	)
	cmd := &cobra.Command{
		Use:   "worker --coordinator ADDR --job JOB_ID",
		Short: "Run a worker: register, follow the job's plan and train its share",
		Long: `Run a training worker for one job. The worker measures its device (GEMM
GFLOP/s per dtype, cores, memory), registers with the coordinator, renews its
lease by heartbeat, follows the job's plan and trains its share of every
global batch, summing gradients with the other ranks over a TCP ring.

Ranks on the same host pass gradients through shared memory: a ring of
--shm-ring bytes per link direction in /dev/shm, reserved when the ring links
are set up (about 8 MiB per pair of same-host ranks at the default). The TCP
connection still carries the frame headers and notices a dead peer. Where
/dev/shm is small (a container's default is 64 MiB) links that do not fit fall
back to TCP; --shm-ring 0 (or LOOM_SHM_RING=0 in the environment, which
workers started by loom launch inherit) turns shared memory off.

With --metrics-addr it serves Prometheus metrics at http://ADDR/metrics: its
training (loom_train_*: steps, samples, loss, learning rate, step time and its
phases), all-reduces (loom_collective_*), checkpoint writes (loom_checkpoint_*),
plan generation, evaluations and loom_worker_info (rank, stage, device), plus
the Go runtime and process metrics. While it is a generation's rank 0 it also
appends one JSON line per step to CHECKPOINT_DIR/JOB/metrics.jsonl (unless
checkpoint.disabled), which loom plot reads.

With --tls-ca, --tls-cert and --tls-key (a worker certificate from loom certs)
its calls to the coordinators and its ring links are mutual TLS; the ring
admits only worker certificates of the cluster's CA.

It exits 0 when the job completes, 3 when the job is cancelled, and stops
cleanly (deregistering) on SIGINT or SIGTERM. With LOOM_CPUPROFILE=DIR in the
environment it writes a CPU profile of its run to DIR/ID.pprof.`,
		Example: `  loom worker --coordinator 10.0.0.5:7070 --job job-1
  loom worker --coordinator c1:7070,c2:7070 --job job-1 --device cpu:threads=1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lvl, err := zapcore.ParseLevel(level)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := newLogger(lvl)
			defer log.Sync()
			d, err := openDevice("--device", dev)
			if err != nil {
				return err
			}
			// One OS thread per compute thread: several workers sharing a
			// host then do not oversubscribe its cores (measured: 2 workers
			// with threads=1 on 2 cores train ~10% faster). GOMAXPROCS in
			// the environment still wins.
			if os.Getenv("GOMAXPROCS") == "" && d.Threads() < runtime.NumCPU() {
				runtime.GOMAXPROCS(max(1, d.Threads()))
			}
			if id == "" {
				host, _ := os.Hostname()
				id = fmt.Sprintf("%s-%d", host, os.Getpid())
			}
			cfg := worker.DefaultAgentConfig()
			cfg.ID, cfg.JobID, cfg.Device, cfg.Logger = id, job, d, log
			if cfg.ShmRingBytes, err = parseByteSize(shmRing); err == nil {
				err = collective.CheckShmRing(cfg.ShmRingBytes)
			}
			if err != nil {
				return fmt.Errorf("--shm-ring %q: %w", shmRing, err)
			}
			cfg.Coordinators = strings.Split(coord, ",")
			cfg.Advertise = advertise
			if cfg.JoinToken, err = readJoinToken(joinToken, joinTokenFile); err != nil {
				return err
			}
			if cfg.TLS, err = tls.load(pki.RoleWorker); err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if w := plainTextWarning(cfg.TLS, append([]string{cfg.Listen}, cfg.Coordinators...)...); w != "" {
				log.Warn(w)
			}
			if ledger != "" {
				f, err := openLedger(filepath.Dir(ledger), strings.TrimSuffix(filepath.Base(ledger), ".jsonl"))
				if err != nil {
					return err
				}
				defer f.Close()
				cfg.Ledger = f
			}
			if dir := os.Getenv("LOOM_CPUPROFILE"); dir != "" {
				// Developer aid: a CPU profile of this worker, DIR/ID.pprof.
				stop, err := startCPUProfile(filepath.Join(dir, id+".pprof"))
				if err != nil {
					return fmt.Errorf("LOOM_CPUPROFILE: %w", err)
				}
				defer stop()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if metricsAddr != "" {
				reg := metrics.NewRegistry()
				if _, err := metrics.Serve(ctx, metricsAddr, "--metrics-addr", reg, log); err != nil {
					return err
				}
				cfg.Metrics = reg
			}
			err = worker.RunAgent(ctx, cfg)
			switch {
			case err == nil:
				log.Info("job complete; worker exiting")
				return nil
			case errors.Is(err, worker.ErrDrained):
				log.Info("drained: left the job at a step boundary; worker exiting")
				return nil
			case errors.Is(err, worker.ErrJobCancelled):
				log.Warn("job cancelled; worker exiting")
				return exitError{code: 3}
			case ctx.Err() != nil:
				log.Info("stopped by signal")
				return nil
			}
			return explainTLS(diagnoseTLS(err, cfg.TLS, cfg.Coordinators))
		},
	}
	f := cmd.Flags()
	f.StringVar(&coord, "coordinator", "", "coordinator gRPC address(es), comma-separated (required)")
	f.StringVar(&job, "job", "", "job id to work on (required)")
	f.StringVar(&id, "id", "", "worker id (default HOSTNAME-PID)")
	f.StringVar(&dev, "device", "cpu", "device spec, e.g. cpu or cpu:threads=1")
	f.StringVar(&listen, "listen", "", "collective (ring) address to bind, host:port (default 127.0.0.1:0: this host only; 0.0.0.0:PORT for other hosts)")
	f.StringVar(&joinToken, "join-token", os.Getenv("LOOM_JOIN_TOKEN"), "token the coordinators require to register (env LOOM_JOIN_TOKEN; a flag value shows in ps: prefer the env or --join-token-file)")
	f.StringVar(&joinTokenFile, "join-token-file", "", "read the join token from this file (its first line)")
	f.StringVar(&advertise, "advertise", os.Getenv("LOOM_ADVERTISE"), "host[:port] the other workers dial for the ring (env LOOM_ADVERTISE; default: the bound address, or the host's first routable address when bound to 0.0.0.0)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&ledger, "sample-ledger", "", "append one JSON line per step started (tentative) and completed (epoch, step, generation, samples) to this file")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics of this worker's training (loom_train_*, loom_collective_*, loom_checkpoint_*, loom_worker_info) and process at http://ADDR/metrics; host:port, port 0 picks one (logged); empty: off")
	tls.flags(cmd)
	f.StringVar(&shmRing, "shm-ring", envOr("LOOM_SHM_RING", "4MiB"), "shared-memory ring per link direction to ranks on this host; 0: gradients through TCP only")
	_ = cmd.MarkFlagRequired("coordinator")
	_ = cmd.MarkFlagRequired("job")
	return cmd
}

// startCPUProfile writes a CPU profile to path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// envOr returns the environment variable key, or def when it is unset.
func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

// readJoinToken is the worker's join token: the one given, or the first
// non-empty line of file. Surrounding whitespace (a file's newline) is
// not part of a token.
func readJoinToken(token, file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(token), nil
	}
	if token != "" {
		return "", fmt.Errorf("give --join-token (or LOOM_JOIN_TOKEN) or --join-token-file, not both")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--join-token-file: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if t := strings.TrimSpace(line); t != "" {
			return t, nil
		}
	}
	return "", fmt.Errorf("--join-token-file %s: no token in it", file)
}
