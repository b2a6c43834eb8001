package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/train"
)

type launchOpts struct {
	workers       int
	workerDevices []string
	coordinator   string
	detach        bool
	device        string
	json          bool
	maxSteps      int
	quiet         bool
	logLevel      string
	resume        string
	overwrite     bool
	globalBatch   int
	ledgerDir     string
	metrics       string
	metricsAddr   string
	httpAddr      string
	tls           tlsFiles // with --coordinator
	stages        string   // --pipeline-stages: a count or auto
	schedule      string   // --pipeline-schedule
	partition     string   // --pipeline-partition: measured or uniform
}

func newLaunchCmd() *cobra.Command {
	var o launchOpts
	var devs string
	cmd := &cobra.Command{
		Use:   "launch JOB.yaml",
		Short: "Validate a job config and train it",
		Long: `Validate JOB.yaml and train it to the end, showing progress (a bar on a
terminal, log lines otherwise) and a summary with the test-set accuracy.

The config is checked before any work starts: an unknown key, a value of the
wrong type or a missing dataset path is reported with its file, line and field.

With --workers N (N > 1) loom starts an embedded coordinator and N local
worker processes that train data-parallel, summing gradients over a TCP ring;
with --coordinator it submits to a running cluster and follows the job
(--detach prints the job id and returns). Batch shares follow each worker's
measured speed; the summary shows the last plan's split.

Each step is appended as one JSON line to CHECKPOINT_DIR/JOB/metrics.jsonl,
beside the job's checkpoints (unless checkpoint.disabled; with workers, by
the rank 0 of each generation); loom plot reads it. --metrics-addr serves
Prometheus metrics of the training (with workers: of each worker).

Ctrl-C stops at the next step boundary and still prints the summary (with
workers: cancels the job and stops them).`,
		Example: `  loom launch examples/mnist-mlp.yaml
  loom launch examples/mnist-mlp-bf16.yaml --json
  loom launch examples/mnist-mlp.yaml --device cpu:threads=1 --max-steps 100
  loom launch examples/mnist-mlp.yaml --workers 2 --device cpu:threads=1
  loom launch examples/mnist-mlp.yaml --coordinator 10.0.0.5:7070 --detach`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.workerDevices = parseWorkerDevices(devs)
			if cmd.Flags().Changed("global-batch") && o.globalBatch <= 0 {
				return fmt.Errorf("--global-batch %d: must be > 0", o.globalBatch)
			}
			if o.tls.changed(cmd) && o.coordinator == "" {
				return fmt.Errorf("--tls-ca, --tls-cert and --tls-key are for submitting to a cluster (--coordinator); this machine's own workers talk over loopback in plain text")
			}
			return runLaunch(cmd.Context(), cmd.OutOrStdout(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.workers, "workers", 1, "local worker processes; 1 trains in this process, N > 1 starts an embedded coordinator and N workers")
	f.StringVar(&o.device, "device", "cpu", "device spec, e.g. cpu or cpu:threads=2")
	f.StringVar(&devs, "worker-devices", "", `per-worker device specs separated by ';' (e.g. "cpu:threads=1;cpu:threads=2"), overriding --device`)
	f.StringVar(&o.coordinator, "coordinator", "", "submit to a running coordinator cluster (comma-separated addresses) and follow the job")
	f.BoolVar(&o.detach, "detach", false, "with --coordinator: print the job id and return")
	o.tls.flags(cmd)
	f.BoolVar(&o.json, "json", false, "print the summary as one JSON object on stdout")
	f.IntVar(&o.globalBatch, "global-batch", 0, "override train.global_batch")
	f.IntVar(&o.maxSteps, "max-steps", 0, "stop after this many steps (overrides train.max_steps)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no progress output, only the summary")
	f.BoolVar(&o.overwrite, "overwrite", false, "start over even though checkpoint.dir holds checkpoints of an earlier run of this job: they are deleted")
	f.StringVar(&o.resume, "resume", "", `continue from a checkpoint: "latest" (newest valid one of this job) or a checkpoint directory`)
	f.StringVar(&o.ledgerDir, "sample-ledger", "", "directory for per-worker JSONL ledgers of the samples each step used (completed, and tentative when a worker starts its share; for audits and tests)")
	f.StringVar(&o.metrics, "metrics", "", "single-process launch: also write the metrics history (one JSON line per step: step, epoch, loss, lr, ...; as in CHECKPOINT_DIR/JOB/metrics.jsonl) to this file, replacing it")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics of the training (loom_train_*, loom_checkpoint_*, loom_worker_info, ...) at http://ADDR/metrics; host:port, port 0 picks one (logged). With --workers N, worker i serves them at port+i (port 0: each picks one); empty: off")
	f.StringVar(&o.httpAddr, "http-addr", "", "with --workers: serve the embedded coordinator's status web page (loss and throughput plots, plan, events) and its /metrics at this host:port")
	f.StringVar(&o.stages, "pipeline-stages", "", "override cluster.pipeline_stages: cut the gpt into this many pipeline stages over the workers, or auto (the planner picks the count with the best predicted step time)")
	f.StringVar(&o.schedule, "pipeline-schedule", "", "override cluster.pipeline_schedule: 1f1b or gpipe")
	f.StringVar(&o.partition, "pipeline-partition", "", "override cluster.pipeline_partition: measured (blocks per stage balance the workers' measured speeds) or uniform (the same number of blocks on every stage)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (workers log at warn unless debug)")
	return cmd
}

// applyPipeline applies --pipeline-stages, --pipeline-schedule and
// --pipeline-partition to job and refuses a pipeline the launch cannot run.
func (o launchOpts) applyPipeline(job *jobspec.Job) error {
	if o.stages != "" {
		switch n, err := strconv.Atoi(o.stages); {
		case o.stages == "auto":
			job.Cluster.PipelineStages = jobspec.AutoStages
		case err != nil || n < 1:
			return fmt.Errorf("--pipeline-stages %q: want a stage count (1 or more) or auto", o.stages)
		default:
			job.Cluster.PipelineStages = jobspec.Stages(n)
		}
	}
	if o.schedule != "" {
		job.Cluster.PipelineSchedule = o.schedule
	}
	switch o.partition {
	case "":
	case "measured", "uniform":
		job.Cluster.PipelinePartition = o.partition
	default:
		return fmt.Errorf("--pipeline-partition %q: want measured or uniform", o.partition)
	}
	if o.stages != "" || o.schedule != "" || o.partition != "" {
		if err := job.Validate(); err != nil {
			return fmt.Errorf("--pipeline-stages: %w", err)
		}
	}
	n := int(job.Cluster.PipelineStages)
	switch {
	case !job.Cluster.Pipelined():
	case o.workers == 1 && o.coordinator == "":
		return fmt.Errorf("cluster.pipeline_stages: pipeline stages run on workers, one or more per stage: use --workers N (N >= %d) or --coordinator", max(n, 2))
	case o.coordinator == "" && o.workers < n:
		return fmt.Errorf("--workers %d is fewer than the %d pipeline stages (each stage needs a worker of its own)", o.workers, n)
	}
	return nil
}

func runLaunch(ctx context.Context, stdout io.Writer, path string, o launchOpts) error {
	job, err := jobspec.Load(path)
	if err != nil {
		return err
	}
	switch {
	case o.workers < 1 || o.workers > 64:
		return fmt.Errorf("--workers %d: want 1 to 64 local workers", o.workers)
	case o.workers > 1 && o.coordinator != "":
		return fmt.Errorf("--workers starts local workers with an embedded coordinator; with --coordinator, start workers with `loom worker --coordinator ... --job ID`")
	case o.detach && o.coordinator == "":
		return fmt.Errorf("--detach needs --coordinator: an embedded coordinator ends with this process")
	case o.metrics != "" && (o.workers > 1 || o.coordinator != ""):
		return fmt.Errorf("--metrics is for single-process launches; workers report progress to the coordinator")
	case o.httpAddr != "" && (o.workers < 2 || o.coordinator != ""):
		return fmt.Errorf("--http-addr serves the embedded coordinator's page, which --workers N (N > 1) starts; a cluster's coordinators serve theirs with `loom coordinator --http-addr`")
	case o.metricsAddr != "" && o.coordinator != "":
		return fmt.Errorf("--metrics-addr: with --coordinator the workers train: start them with `loom worker --metrics-addr`")
	case len(o.workerDevices) > o.workers:
		return fmt.Errorf("--worker-devices lists %d devices for %d workers", len(o.workerDevices), o.workers)
	}
	if _, err := workerMetricsAddr(o.metricsAddr, o.workers-1); err != nil {
		return err
	}
	if o.maxSteps < 0 {
		return fmt.Errorf("--max-steps %d: must be >= 0", o.maxSteps)
	}
	if o.maxSteps > 0 {
		job.Train.MaxSteps = o.maxSteps
	}
	if o.globalBatch != 0 {
		job.Train.GlobalBatch = o.globalBatch
		if err := job.Validate(); err != nil {
			return fmt.Errorf("--global-batch: %w", err)
		}
	}
	if err := o.applyPipeline(job); err != nil {
		return err
	}
	switch {
	case o.overwrite && o.resume != "":
		return fmt.Errorf("--overwrite deletes the job's checkpoints and --resume continues from one: give one of them")
	case o.overwrite && o.coordinator != "":
		return fmt.Errorf("--overwrite deletes checkpoints on this machine; with --coordinator the workers write them on theirs: remove them there")
	case o.overwrite && job.Checkpoint.Disabled:
		return fmt.Errorf("--overwrite: %s has checkpoint.disabled: true", path)
	}
	if o.resume != "" {
		if job.Checkpoint.Disabled {
			return fmt.Errorf("--resume: %s has checkpoint.disabled: true", path)
		}
		job.Checkpoint.Resume = o.resume
	}
	dev, err := openDevice("--device", o.device)
	if err != nil {
		return err
	}
	for _, spec := range o.workerDevices {
		if _, err := openDevice("--worker-devices", spec); err != nil {
			return err
		}
	}
	level, err := zapcore.ParseLevel(o.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if o.quiet {
		level = max(level, zapcore.WarnLevel)
	}
	log := newLogger(level)
	defer log.Sync()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !job.Checkpoint.Disabled && o.coordinator == "" {
		// The checkpoints are written on this machine (by this process or
		// its local workers): claim the job's directory for this run.
		unlock, err := claimCheckpoints(ctx, job, o, log)
		if err != nil {
			return err
		}
		defer unlock()
	}
	if o.workers > 1 || o.coordinator != "" {
		return runCluster(ctx, stdout, job, o, log)
	}

	stepMetrics, err := openLocalMetrics(ctx, job, o.metricsAddr, o.metrics, dev.Name(), log)
	if err != nil {
		return err
	}
	defer stepMetrics.close()
	split, err := train.OpenData(job)
	if err != nil {
		return fmt.Errorf("%s: data: %w", path, err)
	}
	tr, err := train.NewTrainer(job, dev, split, log)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	log.Info("launch", zap.String("job", job.Name), zap.String("data", split.Source), zap.Int("train_samples", tr.TrainSize()),
		zap.Int("params", tr.NumParams()), zap.String("precision", job.Train.Precision), zap.String("device", dev.Name()),
		zap.Int("threads", dev.Threads()), zap.Int("steps", tr.TotalSteps()))

	var view *progressView
	if !o.quiet {
		view = newProgressView(os.Stderr, job.Train.LogEvery, log)
	}
	if o.ledgerDir != "" {
		f, err := openLedger(o.ledgerDir, "local")
		if err != nil {
			return err
		}
		defer f.Close()
		tr.Ledger = f
	}
	onProgress := func(p train.Progress) {
		stepMetrics.step(p)
		if view != nil {
			view.Update(p)
		}
	}
	var ck *train.Checkpointer
	// The writer goroutine reports each checkpoint; Run has closed the
	// checkpointer (waited for it) before these are read.
	var lastCk checkpoint.Info
	var ckFailures int
	var ckErr error
	if !job.Checkpoint.Disabled {
		if job.Checkpoint.Resume != "" {
			info, err := train.ResumeFrom(ctx, tr, nil, log)
			if err != nil {
				return err
			}
			if err := nothingLeft(job, info, tr.TotalSteps()); err != nil {
				return err
			}
			log.Info("resumed", zap.String("checkpoint", info.Path), zap.Int("step", info.Step), zap.Int("of", tr.TotalSteps()))
		}
		if ck, err = train.NewCheckpointer(job, log, func(i checkpoint.Info) {
			log.Debug("checkpoint published", zap.String("path", i.Path), zap.Int("step", i.Step))
			lastCk = i
		}, func(step int, err error) {
			ckFailures++
			ckErr = fmt.Errorf("step %d: %w", step, err)
		}); err != nil {
			return err
		}
		ck.Observer = stepMetrics.checkpointObserver()
	}
	sum, runErr := tr.Run(ctx, ck, onProgress)
	if view != nil && runErr != nil {
		view.Done()
	}
	if sum == nil {
		return runErr
	}
	stepMetrics.finalEvaluation(sum.TestLoss, sum.TestAccuracy)
	if ck != nil {
		sum.CheckpointFailures = ckFailures
		switch {
		case lastCk.Step == sum.Steps && lastCk.Path != "":
			sum.Checkpoint = filepath.Join(job.Checkpoint.Dir, lastCk.Path)
		case ckErr != nil:
			sum.CheckpointError = ckErr.Error()
		case sum.Steps > 0:
			sum.CheckpointError = "no checkpoint of the last step was written"
		}
	}
	if o.json {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
	} else {
		printSummary(stdout, sum)
	}
	if errors.Is(runErr, train.ErrInterrupted) {
		return exitError{code: 130}
	}
	return runErr
}

// nothingLeft refuses to resume a checkpoint at or past the job's last
// step: there is nothing to train (a finished job).
func nothingLeft(job *jobspec.Job, info checkpoint.Info, total int) error {
	if info.Step < total {
		return nil
	}
	return fmt.Errorf("--resume: %s is at step %d and the job has %d steps (train.epochs %d, train.max_steps %d): nothing left to train; raise train.epochs or --max-steps to train further",
		filepath.Join(job.Checkpoint.Dir, info.Path), info.Step, total, job.Train.Epochs, job.Train.MaxSteps)
}

// claimCheckpoints locks the job's checkpoint directory for this run, and
// refuses a fresh run (no --resume) where an earlier run of the job left
// checkpoints, unless --overwrite deletes them: a re-run never replaces
// another run's checkpoints without being told to.
func claimCheckpoints(ctx context.Context, job *jobspec.Job, o launchOpts, log *zap.Logger) (func(), error) {
	host, _ := os.Hostname()
	unlock, err := checkpoint.LockJob(job.Checkpoint.Dir, job.Name,
		fmt.Sprintf("loom launch (pid %d on %s, started %s)", os.Getpid(), host, time.Now().Format(time.RFC3339)))
	if err != nil {
		return nil, err
	}
	if job.Checkpoint.Resume != "" {
		return unlock, nil
	}
	store, err := checkpoint.NewLocalStorage(job.Checkpoint.Dir)
	if err != nil {
		unlock()
		return nil, err
	}
	old, err := checkpoint.List(ctx, store, job.Name)
	if err != nil || len(old) == 0 {
		return unlock, err
	}
	dir := filepath.Join(job.Checkpoint.Dir, job.Name)
	if !o.overwrite {
		unlock()
		return nil, fmt.Errorf("%s holds %d checkpoint(s) of an earlier run of %q (newest: step %d): --resume latest continues from it, --overwrite deletes them and starts over, or set checkpoint.dir elsewhere",
			dir, len(old), job.Name, old[0].Step)
	}
	if err := store.RemoveAll(ctx, job.Name); err != nil {
		unlock()
		return nil, fmt.Errorf("--overwrite: %w", err)
	}
	log.Info("--overwrite: deleted the checkpoints of an earlier run", zap.String("dir", dir), zap.Int("checkpoints", len(old)), zap.Int("newest_step", old[0].Step))
	return unlock, nil
}

func printSummary(out io.Writer, s *train.Summary) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "job\t%s (%s)\n", s.Job, s.Status)
	fmt.Fprintf(w, "steps\t%d (%.2f epochs, %d samples)\n", s.Steps, s.Epochs, s.Samples)
	fmt.Fprintf(w, "final loss\t%.4f\n", s.FinalLoss)
	if s.TokensPerSample > 0 {
		fmt.Fprintf(w, "validation loss\t%.4f (perplexity %.2f), next-token accuracy %.2f%%\n", s.TestLoss, math.Exp(s.TestLoss), 100*s.TestAccuracy)
		fmt.Fprintf(w, "throughput\t%.0f tokens/s (%.1f sequences/s)\n", s.TokensPerSec, s.SamplesPerSec)
	} else {
		fmt.Fprintf(w, "test accuracy\t%.2f%%\n", 100*s.TestAccuracy)
		fmt.Fprintf(w, "throughput\t%.0f samples/s\n", s.SamplesPerSec)
	}
	fmt.Fprintf(w, "wall time\t%s\n", time.Duration(s.WallSeconds*float64(time.Second)).Round(10*time.Millisecond))
	fmt.Fprintf(w, "precision\t%s on %s, %d worker(s)\n", s.Precision, s.Device, s.Workers)
	if len(s.Shares) > 1 {
		fmt.Fprintf(w, "batch shares\t%s\n", formatShares(s.Shares))
	}
	if s.SkippedSteps > 0 {
		fmt.Fprintf(w, "skipped steps\t%d (fp16 overflow)\n", s.SkippedSteps)
	}
	switch {
	case s.CheckpointError != "":
		fmt.Fprintf(w, "checkpoint\tNOT SAVED: %s\n", s.CheckpointError)
	case s.Checkpoint != "":
		fmt.Fprintf(w, "checkpoint\t%s\n", s.Checkpoint)
	}
	if s.CheckpointFailures > 0 {
		fmt.Fprintf(w, "failed writes\t%d checkpoint(s)\n", s.CheckpointFailures)
	}
	w.Flush()
}

// formatShares shows each rank's samples per global batch and its fraction
// of the batch, per pipeline stage ("stage N:" only with several stages),
// e.g. "w0 2781 (67.9%), w1 1315 (32.1%)".
func formatShares(shares []train.RankShare) string {
	total := map[int]int64{}
	stages := 0
	for _, r := range shares {
		total[r.Stage] += r.Samples
		stages = max(stages, r.Stage+1)
	}
	var parts []string
	for st := range stages {
		var ranks []string
		for _, r := range shares {
			if r.Stage == st {
				ranks = append(ranks, fmt.Sprintf("%s %d (%.1f%%)", r.Worker, r.Samples, 100*float64(r.Samples)/float64(max(1, total[st]))))
			}
		}
		line := strings.Join(ranks, ", ")
		if stages > 1 {
			blocks := ""
			for _, r := range shares {
				if r.Stage == st && r.Blocks != "" {
					blocks = " (blocks " + r.Blocks + ")"
				}
			}
			line = fmt.Sprintf("stage %d%s: %s", st, blocks, line)
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}

// openLedger opens (appending) dir/name.jsonl for a sample ledger.
func openLedger(dir, name string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--sample-ledger: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--sample-ledger: %w", err)
	}
	return f, nil
}

// openDevice opens a device spec such as "cpu:threads=2" from the backends
// this binary has; flag names the option it came from in errors.
func openDevice(flag, spec string) (device.Device, error) {
	var reg device.Registry
	if err := cpu.Register(&reg); err != nil {
		return nil, err
	}
	d, err := reg.Open(spec)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", flag, spec, err)
	}
	return d, nil
}
