package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

// runCluster launches job through a coordinator: the embedded one (plus
// o.workers local worker processes) when o.coordinator is empty, else a
// running cluster. It follows the job until it completes, is cancelled, or
// ctx ends (then it cancels the job and stops its workers).
func runCluster(ctx context.Context, stdout io.Writer, job *jobspec.Job, o launchOpts, log *zap.Logger) error {
	addrs := []string{o.coordinator}
	if o.coordinator == "" {
		cfg := coordinator.DefaultConfig()
		cfg.Logger = log.Named("coordinator").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
		// The default lease, as a cluster has: a killed or frozen worker is
		// found by its peers' failure reports in about a second (see
		// coordinator/failure.go), not by the lease. Shares follow measured
		// speed within about a second.
		cfg.ReplanInterval = time.Second
		hl, err := listenCoordinatorHTTP(o.httpAddr, "", log)
		if err != nil {
			return err
		}
		srv, err := coordinator.StartEmbedded(ctx, cfg)
		if err != nil {
			hl.close()
			return err
		}
		defer srv.Close()
		defer hl.serve(srv)()
		addrs = []string{srv.Addr()}
	}
	conn, err := o.tls.dial(addrs)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := api.NewCoordinatorClient(conn)

	if job.Checkpoint.Resume == "latest" {
		if err := resolveLatest(ctx, client, job, o.coordinator == "", log); err != nil {
			return err
		}
	}
	body, err := job.Marshal()
	if err != nil {
		return err
	}
	minW := job.Cluster.MinWorkers
	if o.coordinator == "" && o.workers > minW && (job.Cluster.MaxWorkers == 0 || o.workers <= job.Cluster.MaxWorkers) {
		minW = o.workers // start once every local worker is up
	}
	// A request id makes the submit safe to retry (the client retries on a
	// leader change): the coordinator returns the same job.
	var rid [8]byte
	_, _ = rand.Read(rid[:])
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := client.SubmitJob(sctx, &api.SubmitJobRequest{RequestId: hex.EncodeToString(rid[:]), Spec: jobSpec(job, body, minW)})
	cancel()
	if err != nil {
		return fmt.Errorf("submit %s: %w", job.Name, explainTLS(err))
	}
	jobID := resp.GetJob().GetId()
	if o.detach {
		fmt.Fprintln(stdout, jobID)
		return nil
	}
	log.Info("submitted", zap.String("job", jobID), zap.Strings("coordinator", addrs))

	var procs *workerProcs
	if o.coordinator == "" {
		if procs, err = startWorkers(addrs[0], jobID, o, log); err != nil {
			return err
		}
		defer procs.stop(5 * time.Second)
	}
	return follow(ctx, stdout, client, job, jobID, o, procs, log)
}

// follow polls the job until it ends and prints the summary.
func follow(ctx context.Context, stdout io.Writer, client api.CoordinatorClient, job *jobspec.Job, jobID string, o launchOpts, procs *workerProcs, log *zap.Logger) error {
	n := trainSize(job)
	total := job.TotalSteps(n)
	sched := train.ScheduleOf(job, total)
	var view *progressView
	if !o.quiet {
		view = newProgressView(os.Stderr, job.Train.LogEvery, log)
	}
	start := time.Now()
	var firstStep time.Time
	lastStep := int64(-1)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var exited <-chan error
	var allGone <-chan struct{}
	if procs != nil {
		exited, allGone = procs.failed, procs.allGone
	}
	goneSince := time.Time{}
	var members []string // worker ids of the current plan, sorted
	var shares []train.RankShare
	var waitReason string
	var last *api.GetJobResponse // the newest answer
	summary := func(status string, j *api.Job, plan *api.Plan) *train.Summary {
		s := &train.Summary{Job: job.Name, Status: status, Steps: int(j.GetStep()), Samples: job.SamplesIn(int(j.GetStep()), n),
			FinalLoss: j.GetLastLoss(), TestAccuracy: j.GetTestAccuracy(), TestLoss: j.GetTestLoss(), WallSeconds: time.Since(start).Seconds(),
			Precision: job.Train.Precision, Device: o.device, Workers: len(plan.GetRanks()), Shares: shares}
		s.Epochs = float64(s.Samples) / float64(max(1, n))
		s.SamplesPerSec = j.GetSamplesPerSecond() // measured by the reporting rank
		if s.SamplesPerSec == 0 && !firstStep.IsZero() {
			s.SamplesPerSec = float64(s.Samples) / time.Since(firstStep).Seconds()
		}
		if job.Model.Kind == "gpt" {
			s.TokensPerSample = job.Model.Context
			s.TokensPerSec = s.SamplesPerSec * float64(job.Model.Context)
		}
		return s
	}
	emit := func(s *train.Summary) {
		if o.json {
			b, _ := json.Marshal(s)
			fmt.Fprintln(stdout, string(b))
		} else {
			printSummary(stdout, s)
		}
	}
	for {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = client.CancelJob(cctx, &api.CancelJobRequest{JobId: jobID, Reason: "launch interrupted"})
			// The job as it stands now, not as the last poll saw it: a
			// fast job can be steps ahead of it (or it saw none yet).
			if now, err := client.GetJob(cctx, &api.GetJobRequest{JobId: jobID}); err == nil && now.GetJob().GetStep() >= last.GetJob().GetStep() {
				last = now
				lastStep = now.GetJob().GetStep()
			}
			cancel()
			if view != nil {
				view.Done()
			}
			fmt.Fprintf(os.Stderr, "job %s cancelled at step %d\n", jobID, max(lastStep, 0))
			if last != nil && last.GetJob().GetStep() > 0 {
				emit(summary("interrupted", last.GetJob(), last.GetPlan()))
			}
			return exitError{code: 130}
		case err := <-exited:
			return fmt.Errorf("job %s: %w", jobID, err)
		case <-allGone:
			// Every local worker is gone: give the coordinator a moment
			// to show the completion, then give up rather than wait forever.
			allGone = nil
			goneSince = time.Now()
		case <-tick.C:
		}
		if !goneSince.IsZero() && time.Since(goneSince) > 5*time.Second {
			return fmt.Errorf("job %s: every worker exited but the job did not complete (see the worker logs above)", jobID)
		}
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client.GetJob(gctx, &api.GetJobRequest{JobId: jobID})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("job status unavailable", zap.Error(err))
			}
			continue
		}
		last = resp
		j := resp.GetJob()
		members = logMembership(log, resp.GetPlan(), members)
		if ranks := resp.GetPlan().GetRanks(); len(ranks) > 0 {
			// The last plan with workers: ranks may leave once done.
			shares = shares[:0]
			for _, r := range ranks {
				rs := train.RankShare{Worker: r.GetWorkerId(), Stage: int(r.GetStage()), Samples: r.GetBatchShare()}
				if lays := resp.GetPlan().GetStageLayers(); len(lays) > 1 && rs.Stage < len(lays) {
					rs.Blocks = blockRange(lays[rs.Stage])
				}
				shares = append(shares, rs)
			}
		}
		if j.GetState() == api.JobState_JOB_STATE_PENDING && j.GetReason() != waitReason {
			log.Warn("job waiting", zap.String("reason", j.GetReason()))
		}
		waitReason = j.GetReason()
		if j.GetStep() > 0 && firstStep.IsZero() {
			firstStep = time.Now()
		}
		if view != nil && j.GetStep() != lastStep && j.GetStep() > 0 {
			el := time.Since(start)
			sps := float64(j.GetStep()*int64(job.Train.GlobalBatch)) / el.Seconds()
			eta := time.Duration(float64(el) / float64(j.GetStep()) * float64(int64(total)-j.GetStep()))
			view.Update(train.Progress{Step: int(j.GetStep()), TotalSteps: total, Loss: j.GetLastLoss(), SamplesPerSec: sps,
				Epoch: int(job.SamplesIn(int(j.GetStep()), n) / int64(max(1, n))), LR: sched.LR(int(j.GetStep()) - 1),
				Elapsed: el, ETA: eta, TestAccuracy: math.NaN()})
		}
		lastStep = j.GetStep()
		switch j.GetState() {
		case api.JobState_JOB_STATE_COMPLETED:
			s := summary("completed", j, resp.GetPlan())
			if procs != nil {
				procs.wait(10 * time.Second)
			}
			ckErr := finalCheckpoint(job, j, s)
			emit(s)
			return ckErr
		case api.JobState_JOB_STATE_CANCELLED:
			return fmt.Errorf("job %s cancelled: %s", jobID, j.GetReason())
		}
	}
}

// finalCheckpoint fills the summary's checkpoint fields from the completed
// job: the path of its final checkpoint, or why there is none. Rank 0
// records the final checkpoint, or its failure, before it reports the job
// complete. It returns an error when checkpointing is on and the final
// checkpoint was not saved: the launch then exits non-zero.
func finalCheckpoint(job *jobspec.Job, j *api.Job, s *train.Summary) error {
	s.CheckpointFailures = int(j.GetCheckpointFailures())
	if job.Checkpoint.Disabled {
		return nil
	}
	cks := j.GetCheckpoints()
	if n := len(cks); n > 0 && cks[n-1].GetStep() == j.GetStep() {
		s.Checkpoint = filepath.Join(job.Checkpoint.Dir, cks[n-1].GetPath())
		return nil
	}
	s.CheckpointError = "no checkpoint of the last step was recorded"
	if j.GetCheckpointFailedStep() == j.GetStep() && j.GetCheckpointError() != "" {
		s.CheckpointError = j.GetCheckpointError()
	}
	return fmt.Errorf("job %s completed, but its final checkpoint was not saved: %s", j.GetId(), s.CheckpointError)
}

// logMembership logs which workers joined or left the job when the plan's
// set of workers changes (not on a change of shares alone), and returns the
// new set.
func logMembership(log *zap.Logger, p *api.Plan, old []string) []string {
	var ids []string
	for _, r := range p.GetRanks() {
		ids = append(ids, r.GetWorkerId())
	}
	slices.Sort(ids)
	if slices.Equal(ids, old) || len(ids) == 0 {
		return old
	}
	var joined, left []string
	for _, id := range ids {
		if !slices.Contains(old, id) {
			joined = append(joined, id)
		}
	}
	for _, id := range old {
		if !slices.Contains(ids, id) {
			left = append(left, id)
		}
	}
	log.Info("workers changed", zap.Int64("generation", p.GetGeneration()), zap.Int("ranks", len(ids)),
		zap.Strings("joined", joined), zap.Strings("left", left))
	return ids
}

// trainSize is the number of training samples of the job's dataset (for
// step counts and ETA): examples, read from the label file's header, or
// context windows of a text corpus or of token shards (from their
// manifest and headers); 0 if it cannot be read here.
func trainSize(job *jobspec.Job) int {
	switch job.Data.Dataset {
	case "text":
		ts, err := data.LoadText(job.DataPath(), job.Model.Context)
		if err != nil {
			return 0
		}
		return ts.Train.N
	case "tokens":
		m, err := data.StatTokens(job.DataPath())
		if err != nil || m.Train.Tokens < 1 {
			return 0
		}
		return int((m.Train.Tokens - 1) / int64(job.Model.Context))
	}
	n, err := data.TrainSize(job.Data.Dataset, job.DataPath())
	if err != nil {
		return 0
	}
	return n
}

// workerProcs are the local worker processes of an embedded launch.
type workerProcs struct {
	cmds    []*exec.Cmd
	failed  chan error    // a worker exited with an error
	allGone chan struct{} // closed once every worker has exited
	done    sync.WaitGroup
}

// startWorkers re-executes this binary as n `loom worker` processes. Their
// warnings and errors are shown prefixed with the worker id.
func startWorkers(coord, jobID string, o launchOpts, log *zap.Logger) (*workerProcs, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &workerProcs{failed: make(chan error, o.workers), allGone: make(chan struct{})}
	for i := 0; i < o.workers; i++ {
		id := fmt.Sprintf("w%d", i)
		dev := o.device
		if i < len(o.workerDevices) {
			dev = o.workerDevices[i]
		}
		level := "warn"
		if o.logLevel == "debug" {
			level = "debug"
		}
		args := []string{"worker", "--coordinator", coord, "--job", jobID, "--id", id, "--device", dev, "--log-level", level}
		if o.ledgerDir != "" {
			args = append(args, "--sample-ledger", filepath.Join(o.ledgerDir, id+".jsonl"))
		}
		if o.metricsAddr != "" {
			addr, _ := workerMetricsAddr(o.metricsAddr, i) // checked by runLaunch
			args = append(args, "--metrics-addr", addr)
		}
		cmd := exec.Command(exe, args...)
		cmd.Stdout = io.Discard
		stderr, err := cmd.StderrPipe()
		if err != nil {
			return nil, err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			p.stop(time.Second)
			return nil, fmt.Errorf("start worker %s: %w", id, err)
		}
		p.cmds = append(p.cmds, cmd)
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				fmt.Fprintf(os.Stderr, "[%s] %s\n", id, sc.Text())
			}
			if err := cmd.Wait(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) && ee.ExitCode() == 3 {
					return // job cancelled: reported by follow
				}
				p.failed <- fmt.Errorf("worker %s exited: %v", id, err)
			}
		}()
	}
	go func() { p.done.Wait(); close(p.allGone) }()
	log.Info("started local workers", zap.Int("workers", o.workers), zap.String("device", o.device))
	return p, nil
}

// wait gives the workers up to d to exit on their own.
func (p *workerProcs) wait(d time.Duration) {
	ch := make(chan struct{})
	go func() { p.done.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

// stop sends SIGTERM, waits up to grace, then kills what is left.
func (p *workerProcs) stop(grace time.Duration) {
	for _, c := range p.cmds {
		_ = c.Process.Signal(syscall.SIGTERM) // an exited process just refuses
	}
	ch := make(chan struct{})
	go func() { p.done.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(grace):
		for _, c := range p.cmds {
			_ = c.Process.Kill()
		}
		<-ch
	}
}

// parseWorkerDevices splits "cpu:threads=1;cpu:threads=2" into per-worker specs.
func parseWorkerDevices(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ";")
}

// resolveLatest replaces checkpoint.resume "latest" with the newest valid
// checkpoint of the job's name, so every worker loads the same one. With a
// cluster coordinator only checkpoints it recorded count; the embedded
// coordinator starts empty, so there every published (complete and
// checksummed) checkpoint counts.
func resolveLatest(ctx context.Context, client api.CoordinatorClient, job *jobspec.Job, embedded bool, log *zap.Logger) error {
	var allowed func(string) bool
	if !embedded {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := client.ListJobs(lctx, &api.ListJobsRequest{})
		cancel()
		if err != nil {
			return fmt.Errorf("--resume latest: list recorded checkpoints: %w", err)
		}
		var paths []string
		for _, j := range resp.GetJobs() {
			if j.GetSpec().GetName() == job.Name {
				for _, c := range j.GetCheckpoints() {
					paths = append(paths, c.GetPath())
				}
			}
		}
		allowed = checkpoint.AllowPaths(paths...)
	}
	store, err := checkpoint.NewLocalStorage(job.Checkpoint.Dir)
	if err != nil {
		return err
	}
	_, info, err := checkpoint.Latest(ctx, store, job.Name, allowed, log)
	if err != nil {
		return fmt.Errorf("--resume latest: %w", err)
	}
	if err := nothingLeft(job, info, job.TotalSteps(trainSize(job))); err != nil {
		return err
	}
	job.Checkpoint.Resume = filepath.Join(job.Checkpoint.Dir, filepath.FromSlash(info.Path))
	log.Info("resuming", zap.String("checkpoint", info.Path), zap.Int("step", info.Step))
	return nil
}

// jobSpec is what the coordinator's planner needs of job (whose YAML is
// body), waiting for minW workers.
func jobSpec(job *jobspec.Job, body []byte, minW int) *api.JobSpec {
	spec := &api.JobSpec{
		Name: job.Name, ConfigYaml: body, GlobalBatch: int64(job.Train.GlobalBatch),
		MinWorkers: int32(minW), MaxWorkers: int32(job.Cluster.MaxWorkers), PipelineStages: 1,
		EqualShares: job.Cluster.Balance == "equal",
	}
	if !job.Cluster.Pipelined() {
		return spec
	}
	if job.Cluster.PipelineStages == jobspec.AutoStages {
		spec.PipelineStages, spec.AutoStages = 0, true
	} else {
		spec.PipelineStages = int32(job.Cluster.PipelineStages)
	}
	spec.MicroBatches = int32(job.Train.MicroBatches)
	spec.UniformLayers = job.Cluster.PipelinePartition == "uniform"
	m := job.Model
	c := model.GPTConfig{Layers: m.GPTLayers(), Heads: m.Heads, DModel: m.DModel, Context: m.Context, Vocab: m.Vocab, TieEmbeddings: m.TieEmbeddings}.Cost()
	spec.ModelCost = &api.ModelCost{
		Layers: int32(m.GPTLayers()), EmbedFlops: c.EmbedFLOPs, BlockFlops: c.BlockFLOPs, HeadFlops: c.HeadFLOPs,
		EmbedParams: c.EmbedParams, BlockParams: c.BlockParams, HeadParams: c.HeadParams,
		BlockActBytes: c.BlockActBytes, HeadActBytes: c.HeadActBytes, BoundaryBytes: c.BoundaryBytes,
	}
	return spec
}
