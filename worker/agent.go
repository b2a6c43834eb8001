// Package worker is the cluster member: it registers with the coordinator,
// holds its lease by heartbeat, follows the job's plans, joins each plan
// generation's ring, reports progress and measures its device's profile. The
// training itself is package train's step loop, which the agent drives
// inside each generation.
package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/internal/netaddr"
	"github.com/loomtrain/loom/internal/pki"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

// AgentConfig configures a worker agent.
type AgentConfig struct {
	// ID names the worker; unique among live workers.
	ID string
	// Coordinators are gRPC addresses of any coordinators of the cluster.
	Coordinators []string
	// JobID pins the worker to one job.
	JobID string
	// Listen is the collective (ring) listen address; port 0 picks one.
	Listen string
	// JoinToken is presented to RegisterWorker when the cluster requires
	// one (coordinator Config.JoinToken).
	JoinToken string
	// TLS, if set, is this worker's certificate (a worker's) and the
	// cluster's CA: calls to the coordinators then use mutual TLS and admit
	// only coordinator certificates, and ring links admit only worker
	// certificates. nil is plain text, for one machine.
	TLS *pki.Identity
	// Advertise is the ring address peers dial (a host, or host:port):
	// empty means Listen's, or the host's first routable address when
	// Listen binds every interface (internal/netaddr).
	Advertise string
	// Device computes the steps.
	Device device.Device
	// RPCTimeout bounds each coordinator call.
	RPCTimeout time.Duration
	// Ledger, if set, receives the sample ledger (see Trainer.Ledger).
	Ledger io.Writer
	// ShmRingBytes is the shared-memory ring per direction on ring links to
	// ranks on this host (collective.TCPConfig.ShmRingBytes); 0 sends all
	// gradients through TCP.
	ShmRingBytes int
	// Metrics, if set, receives the Prometheus collectors of this worker's
	// training (metrics.Trainer, labelled with the job's name and ID),
	// registered once the job's config has been read.
	Metrics prometheus.Registerer
	// Logger; nil logs nothing.
	Logger *zap.Logger
}

// DefaultAgentConfig listens on loopback with a random port.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{Listen: "127.0.0.1:0", RPCTimeout: 10 * time.Second, ShmRingBytes: collective.DefaultShmRingBytes}
}

// Validate reports the first missing or invalid field.
func (c AgentConfig) Validate() error {
	ringErr := collective.CheckShmRing(c.ShmRingBytes)
	switch {
	case c.ID == "":
		return errors.New("worker: an id is required")
	case len(c.Coordinators) == 0:
		return errors.New("worker: a coordinator address is required")
	case c.JobID == "":
		return errors.New("worker: a job id is required")
	case c.Device == nil:
		return errors.New("worker: no device")
	case c.RPCTimeout <= 0:
		return errors.New("worker: RPCTimeout must be positive")
	case ringErr != nil:
		return fmt.Errorf("worker: %w", ringErr)
	}
	_, _, err := net.SplitHostPort(c.Listen)
	return err
}

// Agent is one worker process's membership in a job: it registers, holds
// its lease, follows the job's plan and trains its share of every step.
type Agent struct {
	cfg    AgentConfig
	log    *zap.Logger
	client api.CoordinatorClient
	conn   *grpc.ClientConn
	addr   string // collective address as registered
	// ringTLS secures the ring links when AgentConfig.TLS is set.
	ringTLS *tls.Config

	planMu  sync.Mutex
	newest  *api.Plan
	planCh  chan struct{} // closed (and replaced) when newest changes
	jobDone chan struct{} // closed when the plan stream ends (job over)
	// jobEnd is what waiting for a plan returns once jobDone is closed:
	// errJobCompleted, or ErrJobCancelled. Written before the close.
	jobEnd error

	// draining is set once a heartbeat reports the worker drained;
	// drainCh is closed then.
	draining  atomic.Bool
	drainCh   chan struct{}
	drainOnce sync.Once

	// stepNanos is the duration of the last completed step, stepsDone the
	// steps completed (see generationContext).
	stepNanos atomic.Int64
	stepsDone atomic.Int64

	// incarnation is the registration this process holds (its
	// registered_unix_nano); requests name it so that a process whose id
	// another has taken over is refused.
	incarnation atomic.Int64
	// runCtx ends when the agent stops; failure reports run under it and
	// reports waits for them. reportMu orders starting a report after the
	// check of runCtx against the final wait.
	runCtx   context.Context
	reportMu sync.Mutex
	reports  sync.WaitGroup
	// rec records checkpoints with the coordinator (nil without
	// checkpointing).
	rec *recorder
	// metrics publishes the steps (to Prometheus, and the job's history).
	metrics *stepMetrics

	// Training throughput as this worker saw it: global samples of the
	// steps it completed, from the start of its first to the end of its last.
	firstStep, lastStep time.Time
	samples             int64
}

// RunAgent runs a worker until its job completes (nil), the job is
// cancelled (ErrJobCancelled), the worker is drained and out of the plan
// (ErrDrained), or ctx ends (ctx.Err()). It deregisters on the way out.
func RunAgent(ctx context.Context, cfg AgentConfig) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, planCh: make(chan struct{}), jobDone: make(chan struct{}), drainCh: make(chan struct{})}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	a.log = a.log.With(zap.String("worker", cfg.ID))
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("worker: collective listen: %w", err)
	}
	defer func() {
		if ln != nil {
			ln.Close()
		}
	}()
	if a.addr, err = netaddr.Advertise(ln.Addr(), cfg.Advertise); err != nil {
		return fmt.Errorf("worker: collective advertise address: %w", err)
	}
	a.cfg.Listen = ln.Addr().String() // later generations bind the same port again
	var dialOpts []grpc.DialOption
	if cfg.TLS != nil {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS.Config(pki.RoleCoordinator))))
		a.ringTLS = cfg.TLS.Config(pki.RoleWorker)
	}
	if a.conn, err = api.Dial(cfg.Coordinators, dialOpts...); err != nil {
		return err
	}
	defer a.conn.Close()
	a.client = api.NewCoordinatorClient(a.conn)

	jobResp, err := a.call(ctx, func(c context.Context) (any, error) {
		return a.client.GetJob(c, &api.GetJobRequest{JobId: cfg.JobID})
	})
	if err != nil {
		return fmt.Errorf("worker: job %s: %w", cfg.JobID, err)
	}
	spec := jobResp.(*api.GetJobResponse).GetJob().GetSpec()
	job, err := jobspec.Parse(spec.GetName()+".yaml", spec.GetConfigYaml())
	if err != nil {
		return fmt.Errorf("worker: job %s config: %w", cfg.JobID, err)
	}
	compress, err := collective.ParseCompression(job.Cluster.Compress)
	if err != nil {
		return err
	}
	// Measure the device first, alone (the planner's first shares come
	// from it), then load the data while registering: a joining worker is
	// ready sooner.
	profile := MeasureProfile(cfg.Device, a.addr)
	type loaded struct {
		split *data.Split
		err   error
	}
	dataCh := make(chan loaded, 1)
	go func() {
		sp, err := train.OpenData(job)
		dataCh <- loaded{sp, err}
	}()
	reg, err := a.call(ctx, func(c context.Context) (any, error) {
		return a.client.RegisterWorker(api.WithJoinToken(c, cfg.JoinToken), &api.RegisterWorkerRequest{WorkerId: cfg.ID, Profile: profile, JobId: cfg.JobID})
	})
	if err != nil {
		return fmt.Errorf("worker: register %s: %w", cfg.ID, err)
	}
	a.log.Info("registered", zap.String("collective", a.addr), zap.Any("gflops", profile.GetGflops()))
	a.incarnation.Store(reg.(*api.RegisterWorkerResponse).GetWorker().GetRegisteredUnixNano())
	hbEvery := time.Duration(reg.(*api.RegisterWorkerResponse).GetHeartbeatIntervalMs()) * time.Millisecond
	// The heartbeat ends the run with its cause when another process has
	// taken this worker's id over.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.runCtx = rctx
	var bg sync.WaitGroup
	bg.Go(func() { a.heartbeat(rctx, hbEvery, profile, cancel) })
	bg.Go(func() { a.watchPlans(rctx) })
	defer func() {
		cancel(nil)
		bg.Wait()
		a.reportMu.Lock() // no report starts after this
		a.reportMu.Unlock()
		a.reports.Wait()
		a.deregister()
	}()
	defer func() {
		if cause := context.Cause(rctx); errors.Is(cause, errSuperseded) && ctx.Err() == nil {
			err = cause
		}
	}()

	ld := <-dataCh
	if ld.err != nil {
		return fmt.Errorf("worker: job %s data: %w", cfg.JobID, ld.err)
	}
	// A pipeline stage's trainer holds the layers of its stage, which the
	// plan decides: it is built when a generation places this worker.
	// A pipeline job resumed from a checkpoint loads the first trainer it
	// builds, whatever layers it holds, from that checkpoint (whatever
	// layout wrote it); later ones take their state from the ranks.
	resume := job.Checkpoint.Resume != "" && !job.Checkpoint.Disabled && job.Cluster.Pipelined()
	newStage := func(layers model.StageRange, p *train.Pipeline) (*train.Trainer, bool, error) {
		var tr *train.Trainer
		var err error
		if p == nil {
			tr, err = train.NewTrainer(job, cfg.Device, ld.split, a.log)
		} else {
			tr, err = train.NewStageTrainer(job, cfg.Device, ld.split, a.log, layers, p)
		}
		if err != nil {
			return nil, false, err
		}
		tr.Ledger = cfg.Ledger
		if !resume {
			return tr, false, nil
		}
		resume = false
		info, err := train.ResumeFrom(ctx, tr, nil, a.log)
		if err != nil {
			return nil, false, fmt.Errorf("worker: %w", err)
		}
		a.log.Info("resumed", zap.String("checkpoint", info.Path), zap.Int("step", info.Step), zap.Int("first_block", tr.Range().First), zap.Int("last_block", tr.Range().Last-1))
		return tr, true, nil
	}
	var tr *train.Trainer
	tokens := 1
	if job.Model.Kind == "gpt" {
		tokens = job.Model.Context
	}
	if !job.Cluster.Pipelined() {
		if tr, _, err = newStage(model.StageRange{}, nil); err != nil {
			return err
		}
	}
	if a.metrics, err = newStepMetrics(cfg.Metrics, job, cfg.ID, cfg.Device.Name(), tokens, a.log); err != nil {
		return err
	}
	defer a.metrics.close()
	hasState := false
	if job.Checkpoint.Resume != "" && !job.Checkpoint.Disabled && tr != nil {
		// The launcher resolves "latest" among the recorded checkpoints
		// and hands every worker the same directory.
		info, err := train.ResumeFrom(ctx, tr, nil, a.log)
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		hasState = true
		a.log.Info("resumed", zap.String("checkpoint", info.Path), zap.Int("step", info.Step))
	}
	var ck *train.Checkpointer
	if !job.Checkpoint.Disabled {
		a.rec = a.startRecorder()
		defer a.rec.stop(recordDrain)
		if ck, err = train.NewCheckpointer(job, a.log, a.rec.published, a.rec.failed); err != nil {
			return err
		}
		ck.Run = jobResp.(*api.GetJobResponse).GetJob().GetSubmittedUnixNano() / 1e6
		ck.Observer = a.metrics.checkpointObserver()
		defer func() {
			if err := ck.Close(); err != nil {
				a.log.Warn("checkpoint write failed", zap.Error(err))
			}
		}()
	}

	rep := newReporter(a, job)
	bg.Go(func() { rep.run(rctx) })
	return a.train(rctx, job, tr, newStage, ck, hasState, &ln, compress, rep)
}

// deregister leaves the job (best effort: the lease would expire anyway).
func (a *Agent) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = a.client.DeregisterWorker(ctx, &api.DeregisterWorkerRequest{WorkerId: a.cfg.ID, Incarnation: a.incarnation.Load()})
}

// errSuperseded wraps the coordinator's refusal when another process has
// taken this worker's id over: this one stops.
var errSuperseded = errors.New("worker: superseded")

// suspectFloor is the least time a step or a generation's setup may take
// before the rank reports it to the coordinator as possibly failed; a step
// gets suspectSteps times the last step's duration when that is longer.
const (
	suspectFloor = 500 * time.Millisecond
	suspectSteps = 4
)

// suspectAfter is how long the coming step may take before it is reported.
func (a *Agent) suspectAfter() time.Duration {
	return max(suspectFloor, suspectSteps*time.Duration(a.stepNanos.Load()))
}

// watchdog reports generation gen to the coordinator as failed if stop is
// not called within d: a collective blocked on a frozen or cut-off peer
// never returns an error by itself. The report only asks the coordinator to
// check the generation's heartbeats (see coordinator/failure.go), so a peer
// that is merely slow (evaluating, checkpointing) costs one message.
func (a *Agent) watchdog(gen int64, what string, d time.Duration) (stop func() bool) {
	return time.AfterFunc(d, func() {
		a.reportFailure(gen, fmt.Errorf("%s: no progress for %v", what, d))
	}).Stop
}

// reportFailure tells the coordinator (in the background) that this rank's
// work in generation gen failed, unless a newer generation already exists:
// the coordinator confirms the failure by heartbeats and re-plans without a
// lost worker at once, instead of after its lease.
func (a *Agent) reportFailure(gen int64, cause error) {
	a.reportMu.Lock()
	defer a.reportMu.Unlock()
	if a.newerPlan(gen) || a.runCtx.Err() != nil {
		return
	}
	a.reports.Go(func() {
		_, err := a.call(a.runCtx, func(c context.Context) (any, error) {
			return a.client.ReportFailure(c, &api.ReportFailureRequest{JobId: a.cfg.JobID, WorkerId: a.cfg.ID,
				Incarnation: a.incarnation.Load(), Generation: gen, Error: cause.Error()})
		})
		if err != nil && a.runCtx.Err() == nil {
			a.log.Debug("failure report not delivered", zap.Int64("generation", gen), zap.Error(err))
		}
	})
}

// ErrJobCancelled is returned when the job was cancelled while running.
var ErrJobCancelled = errors.New("job cancelled")

// errJobCompleted ends the wait of a worker outside the plan when its job
// completes: the worker then exits as the ranks do.
var errJobCompleted = errors.New("job completed")

// jobCompleted asks whether the job, whose plan stream has ended, ended
// completed (the stream ends the same way for a cancelled job). An
// unanswered question counts as cancelled, as before the distinction.
func (a *Agent) jobCompleted(ctx context.Context) bool {
	r, err := a.call(ctx, func(c context.Context) (any, error) {
		return a.client.GetJob(c, &api.GetJobRequest{JobId: a.cfg.JobID})
	})
	if err != nil {
		if ctx.Err() == nil { // else the worker is stopping anyway
			a.log.Warn("the job's plan stream ended and its state is unknown: taking it as cancelled", zap.Error(err))
		}
		return false
	}
	return r.(*api.GetJobResponse).GetJob().GetState() == api.JobState_JOB_STATE_COMPLETED
}

// ErrDrained is returned when the worker was drained (loom workers drain)
// and its job has moved on to a plan without it, at a step boundary.
var ErrDrained = errors.New("worker drained")

// train follows plan generations until the job's last step.
//
// A pipeline job's trainer (tr nil until then) is built by newStage for the
// layers of the first generation that places this worker, and again when a
// plan gives it other layers.
func (a *Agent) train(ctx context.Context, job *jobspec.Job, tr *train.Trainer, newStage func(model.StageRange, *train.Pipeline) (*train.Trainer, bool, error),
	ck *train.Checkpointer, hasState bool, ln *net.Listener, compress collective.Compression, rep *reporter) error {
	type stageKey struct {
		layers               model.StageRange
		stage, stages, micro int
		gpipe                bool
	}
	built := stageKey{layers: model.StageRange{First: 0, Last: job.Model.GPTLayers()}, stages: 1}
	var gen *generation
	var cancelGen context.CancelFunc
	defer func() {
		gen.close()
		if cancelGen != nil {
			cancelGen()
		}
	}()
	var current int64
	retry := false // the last attempt at the current generation failed
	for tr == nil || !tr.Done() {
		var plan *api.Plan
		var err error
		if retry {
			plan, err = a.planOrRetry(ctx, current)
		} else {
			plan, err = a.nextPlan(ctx, current)
		}
		if errors.Is(err, errJobCompleted) {
			return nil // completed while this worker stood by: nothing left for it
		}
		if err != nil {
			return err
		}
		retry = true // until the generation is set up and stepping
		gen.close()
		gen = nil
		current = plan.GetGeneration()
		if cancelGen != nil {
			cancelGen()
		}
		var gctx context.Context
		gctx, cancelGen = a.generationContext(ctx, current)
		stopDog := a.watchdog(current, "connecting the ranks", suspectFloor)
		g, err := joinGeneration(gctx, plan, a.cfg.ID, *ln, a.cfg.Listen, linkOpts{compress: compress, shmRing: a.cfg.ShmRingBytes, observer: a.metrics.collectiveObserver(), tls: a.ringTLS, handover: job.Cluster.Pipelined()}, a.log)
		stopDog()
		if g != nil || err != nil {
			*ln = nil // consumed by the transport, or closed
		}
		if err != nil {
			a.reportFailure(current, err)
			a.log.Warn("generation setup failed; waiting for the next plan", zap.Int64("generation", current), zap.Error(err))
			continue
		}
		if g == nil {
			a.log.Info("not in this generation: standing by", zap.Int64("generation", current), zap.String("reason", plan.GetReason()))
			retry = false
			continue
		}
		gen = g
		key := stageKey{layers: model.StageRange{First: 0, Last: job.Model.GPTLayers()}, stages: 1}
		if p := gen.pipeline; p != nil {
			p.Micro, p.GPipe = job.PipelineMicro(len(p.Stages)), job.Cluster.PipelineSchedule == "gpipe"
			key = stageKey{gen.layers, p.Stage, len(p.Stages), p.Micro, p.GPipe}
		}
		next := tr
		if tr == nil || key != built {
			// Another place in the pipeline (or none, when the planner of a
			// pipeline_stages: auto job keeps one stage): the trainer for
			// its layers takes their state from the ranks that hold them.
			var loaded bool
			if next, loaded, err = newStage(gen.layers, gen.pipeline); err != nil {
				return fmt.Errorf("generation %d: stage %d (blocks %d-%d): %w", current, gen.stage(), gen.layers.First, gen.layers.Last-1, err)
			}
			if loaded {
				tr, built, hasState = next, key, true
			}
		}
		stopDog = a.watchdog(current, "state sync", suspectFloor)
		var src int
		if job.Cluster.Pipelined() {
			var h handoff
			h, err = gen.handover(gctx, tr, hasState, next, job.Model.GPTLayers(), a.recordedCheckpoints(gctx, job))
			src = h.from
			if h.restored != "" {
				a.log.Warn("no worker held some layers any more: the job went back to its last checkpoint", zap.Int64("generation", current),
					zap.String("checkpoint", h.restored), zap.Int("step", next.Steps()))
			}
		} else {
			src, err = gen.syncState(gctx, next, hasState)
		}
		stopDog()
		if errors.Is(err, errLayersLost) {
			return fmt.Errorf("generation %d: %w", current, err)
		}
		if err != nil {
			if next == tr && errors.Is(err, errStateTorn) {
				hasState = false // part of it was overwritten
			}
			a.reportFailure(current, err)
			a.log.Warn("state sync failed; waiting for the next plan", zap.Int64("generation", current), zap.Error(err))
			continue
		}
		tr, built = next, key
		hasState = true
		retry = false
		a.metrics.joined(gen)
		a.log.Info("generation started", zap.Int64("generation", current), zap.Int("rank", gen.rank), zap.Int("ranks", gen.comm.Size()),
			zap.Int("share", gen.shares.All[gen.shares.Rank]), zap.Int("step", tr.Steps()), zap.Int("state_from", src))
		if err := a.runSteps(gctx, tr, gen, ck, rep); err != nil {
			if errors.Is(err, ErrJobCancelled) {
				return err
			}
			if errors.Is(err, train.ErrLossNaN) {
				return err
			}
			if ctx.Err() != nil {
				if ck != nil && (gen.rank == 0 || gen.pipeline != nil && gen.pipeline.Me == 0) {
					// Clean shutdown: keep the steps since the last
					// checkpoint (each stage writes its shard; the
					// checkpoint is published if every stage stopped after
					// the same step).
					ck.Shutdown(tr, gen.world())
				}
				return ctx.Err()
			}
			a.reportFailure(current, err)
			a.log.Warn("step abandoned; waiting for the next plan", zap.Int64("generation", current), zap.Int("step", tr.Steps()+1), zap.Error(err))
			retry = true
		}
	}
	evaluated := false
	var acc, loss float64
	if gen != nil && gen.pipeline != nil && gen.pipeline.Me == 0 {
		// The final evaluation runs through the first rank of every stage.
		// Each first writes its shard of the final checkpoint and records
		// it if it completed the checkpoint: when the evaluation's result
		// reaches the first stage, every stage has, and rank 0 reports the
		// job complete with the final checkpoint recorded.
		if ck != nil {
			if err := ck.Flush(ctx); err != nil {
				a.log.Error("final checkpoint shard not written", zap.Error(err))
			}
			if !a.rec.wait(recordDrain) {
				a.log.Warn("final checkpoint record not answered yet")
			}
		}
		var err error
		if acc, loss, err = tr.EvaluatePipeline(ctx, gen.pipeline); err != nil {
			return fmt.Errorf("final evaluation: %w", err)
		}
		evaluated = true
	}
	if gen != nil && gen.rank == 0 {
		if ck != nil {
			// The final checkpoint is written and recorded (or its
			// failure is) before the job is reported complete, so the
			// completed job says whether it has a final checkpoint.
			if err := ck.Flush(ctx); err != nil {
				a.log.Error("final checkpoint not written", zap.Error(err))
			}
			if !a.rec.wait(recordDrain) {
				a.log.Warn("final checkpoint record not answered yet; reporting completion anyway")
			}
		}
		if !evaluated {
			acc, loss = tr.Evaluate()
		}
		a.metrics.finalEvaluation(loss, acc)
		var sps float64
		if d := a.lastStep.Sub(a.firstStep); d > 0 {
			sps = float64(a.samples) / d.Seconds()
		}
		return rep.final(ctx, acc, loss, sps)
	}
	// The other ranks stay registered until rank 0 has completed the job,
	// so their leaving does not start a new generation under its report.
	select {
	case <-a.jobDone:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		a.log.Warn("job not marked complete 30 s after the last step; leaving")
	}
	return nil
}

// recordedCheckpoints is the job's checkpoints the coordinator recorded,
// by step (none when checkpoints are disabled or it cannot be asked).
func (a *Agent) recordedCheckpoints(ctx context.Context, job *jobspec.Job) map[int]string {
	out := map[int]string{}
	if job.Checkpoint.Disabled {
		return out
	}
	var resp *api.GetJobResponse
	var err error
	for try := 0; try < 3; try++ { // a leader change is a moment's unavailability
		var r any
		if r, err = a.call(ctx, func(c context.Context) (any, error) {
			return a.client.GetJob(c, &api.GetJobRequest{JobId: a.cfg.JobID})
		}); err == nil {
			resp = r.(*api.GetJobResponse)
			break
		}
		if !isUnavailable(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if resp == nil {
		a.log.Warn("recorded checkpoints unknown", zap.Error(err))
		return out
	}
	for _, c := range resp.GetJob().GetCheckpoints() {
		out[int(c.GetStep())] = c.GetPath()
	}
	return out
}

// runSteps trains until the job is done, a newer plan exists, or a step fails.
func (a *Agent) runSteps(ctx context.Context, tr *train.Trainer, gen *generation, ck *train.Checkpointer, rep *reporter) error {
	tr.Generation = gen.plan.GetGeneration()
	// One step watchdog for the generation, re-armed before each step and
	// stopped after it (no timer or message is built per step).
	var dogStep, dogAfter atomic.Int64
	dog := time.AfterFunc(time.Hour, func() {
		a.reportFailure(gen.plan.GetGeneration(), fmt.Errorf("step %d: no progress for %v", dogStep.Load(), time.Duration(dogAfter.Load())))
	})
	dog.Stop()
	defer dog.Stop()
	// Where this generation's time went, logged at its end (debug).
	var steps int
	var compute, wait, total time.Duration
	defer func() {
		if steps > 0 {
			a.log.Debug("generation time", zap.Int64("generation", gen.plan.GetGeneration()), zap.Int("steps", steps),
				zap.Int("share", gen.shares.All[gen.shares.Rank]), zap.Duration("compute", compute), zap.Duration("wait", wait),
				zap.Duration("other", total-compute-wait), zap.Duration("total", total))
		}
	}()
	_, err := tr.RunSteps(ctx, train.Loop{
		Sync: gen.gradSync(), Shares: gen.shares, Pipeline: gen.pipeline, World: gen.world(), Lead: gen.rank == 0, Checkpointer: ck,
		Before: func() (bool, error) {
			select {
			case <-a.jobDone: // cancelled (a completed job has no steps left)
				return false, ErrJobCancelled
			default:
			}
			d := a.suspectAfter()
			dogStep.Store(int64(tr.Steps() + 1))
			dogAfter.Store(int64(d))
			dog.Reset(d)
			// A rank that has seen a newer plan votes to switch, so every
			// rank finishes this step and leaves the generation after it,
			// together: no step is abandoned for a planned change.
			return a.newerPlan(gen.plan.GetGeneration()), nil
		},
		After: func(r train.StepResult) {
			dog.Stop()
			a.lastStep = time.Now()
			a.stepNanos.Store(int64(r.Took))
			a.stepsDone.Add(1)
			if a.firstStep.IsZero() {
				a.firstStep = a.lastStep.Add(-r.Took)
			}
			steps++
			compute += r.Compute
			wait += r.Wait
			total += r.Took
			a.samples += int64(r.Batch)
			a.metrics.step(gen, r)
			// The step time reported is compute only: the wait for the
			// slower ranks' gradients would hide this device's speed from
			// the planner.
			rep.step(gen.plan.GetGeneration(), r.Step, r.Loss, r.Rows, r.Compute, r.TestAccuracy)
		},
	})
	return err
}

// nextPlan waits for a plan of a generation after current. A draining
// worker that the newest plan leaves out gets ErrDrained instead.
func (a *Agent) nextPlan(ctx context.Context, current int64) (*api.Plan, error) {
	drain := a.drainCh
	for {
		p, changed := a.latestPlan()
		if a.draining.Load() && !hasRank(p, a.cfg.ID) {
			return nil, ErrDrained
		}
		if p != nil && p.GetGeneration() > current {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-a.jobDone:
			return nil, a.jobEnd
		case <-changed:
		case <-drain:
			drain = nil // still in the plan: wait for the one without it
		}
	}
}

// hasRank reports whether plan p gives worker id a rank.
func hasRank(p *api.Plan, id string) bool {
	for _, r := range p.GetRanks() {
		if r.GetWorkerId() == id {
			return true
		}
	}
	return false
}

// retryWait is how long a rank whose generation failed waits for a newer
// plan before it tries the same generation again: a dead peer is replaced
// by a new plan (its lease expires), a transient fault is not.
const retryWait = 3 * time.Second

// planOrRetry waits up to retryWait for a plan after current, then returns
// the newest plan (possibly generation current again).
func (a *Agent) planOrRetry(ctx context.Context, current int64) (*api.Plan, error) {
	wctx, cancel := context.WithTimeout(ctx, retryWait)
	defer cancel()
	p, err := a.nextPlan(wctx, current)
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return p, err
	}
	p, _ = a.latestPlan()
	return p, nil
}

// latestPlan returns the newest plan seen and a channel closed when it
// changes.
func (a *Agent) latestPlan() (*api.Plan, <-chan struct{}) {
	a.planMu.Lock()
	defer a.planMu.Unlock()
	return a.newest, a.planCh
}

func (a *Agent) newerPlan(gen int64) bool {
	p, _ := a.latestPlan()
	return p != nil && p.GetGeneration() > gen
}

// switchGrace is the least time work in a generation may go on without
// completing a step once a newer plan arrived: enough for the step in
// flight and the next to finish (ranks switch together, by vote, once all
// have the plan), short enough that a rank blocked on a dead peer gives up
// quickly. Slow steps get three step times instead.
const switchGrace = 500 * time.Millisecond

// generationContext returns a context for work in generation gen that is
// cancelled once a newer plan exists and no step has completed for a grace
// period (switchGrace, or three times the last step if longer): connecting
// to a dead peer, or an all-reduce with one, then gives up instead of
// waiting for a timeout, while a generation that still steps (its ranks
// wait for every one of them to have the new plan) goes on.
func (a *Agent) generationContext(ctx context.Context, gen int64) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithCancel(ctx)
	go func() {
		for {
			p, changed := a.latestPlan()
			if p != nil && p.GetGeneration() > gen {
				for {
					done := a.stepsDone.Load()
					select {
					case <-gctx.Done():
						return
					case <-time.After(max(switchGrace, 3*time.Duration(a.stepNanos.Load()))):
					}
					if a.stepsDone.Load() == done {
						cancel()
						return
					}
				}
			}
			select {
			case <-gctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return gctx, cancel
}

// watchPlans follows the job's plan stream, reconnecting (through any
// coordinator) when it breaks, until the job ends or ctx does.
func (a *Agent) watchPlans(ctx context.Context) {
	var after int64
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := a.client.WatchPlan(ctx, &api.WatchPlanRequest{JobId: a.cfg.JobID, AfterGeneration: after})
		if err == nil {
			for {
				p, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				backoff = 50 * time.Millisecond
				after = p.GetGeneration()
				a.planMu.Lock()
				a.newest = p
				close(a.planCh)
				a.planCh = make(chan struct{})
				a.planMu.Unlock()
			}
		}
		if errors.Is(err, io.EOF) || api.ReasonOf(err) == api.ReasonJobCancelled || api.ReasonOf(err) == api.ReasonUnknownJob {
			a.jobEnd = ErrJobCancelled
			if errors.Is(err, io.EOF) && a.jobCompleted(ctx) {
				a.jobEnd = errJobCompleted
			}
			close(a.jobDone)
			return
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Debug("plan stream broke; reconnecting", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// heartbeat renews the lease; if the coordinator forgot the worker (lease
// expired), it registers again.
func (a *Agent) heartbeat(ctx context.Context, every time.Duration, profile *api.DeviceProfile, stop context.CancelCauseFunc) {
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r, err := a.call(ctx, func(c context.Context) (any, error) {
			return a.client.Heartbeat(c, &api.HeartbeatRequest{WorkerId: a.cfg.ID, Incarnation: a.incarnation.Load()})
		})
		if api.ReasonOf(err) == api.ReasonSuperseded {
			a.log.Error("another process took this worker id over; stopping", zap.Error(err))
			stop(fmt.Errorf("%w: %v", errSuperseded, status.Convert(err).Message()))
			return
		}
		if err == nil && r.(*api.HeartbeatResponse).GetDraining() {
			a.drainOnce.Do(func() {
				a.log.Info("draining: leaving at the next step boundary")
				a.draining.Store(true)
				close(a.drainCh)
			})
		}
		if api.ReasonOf(err) == api.ReasonUnknownWorker {
			a.log.Warn("lease lost; registering again")
			var r any
			r, err = a.call(ctx, func(c context.Context) (any, error) {
				return a.client.RegisterWorker(api.WithJoinToken(c, a.cfg.JoinToken), &api.RegisterWorkerRequest{WorkerId: a.cfg.ID, Profile: profile, JobId: a.cfg.JobID})
			})
			if err == nil {
				a.incarnation.Store(r.(*api.RegisterWorkerResponse).GetWorker().GetRegisteredUnixNano())
			}
		}
		if err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat failed", zap.Error(err))
		}
	}
}

// call runs one RPC with the configured timeout.
func (a *Agent) call(ctx context.Context, f func(context.Context) (any, error)) (any, error) {
	c, cancel := context.WithTimeout(ctx, a.cfg.RPCTimeout)
	defer cancel()
	return f(c)
}

// isUnavailable reports a transient coordinator error.
func isUnavailable(err error) bool {
	return status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
}
