package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator/scheduler"
	"github.com/loomtrain/loom/model"
)

// benchCoordOptions are the flags of loom bench coordinator.
type benchCoordOptions struct {
	workers, jobs, conns int
	duration, warmup     time.Duration
	lease, confirm       time.Duration
	stepEvery            time.Duration
	churn                float64
	churnDuration        time.Duration
	failover             bool
	plannerStages        []int
	planner              bool
	jsonOut              bool
}

func newBenchCoordinatorCmd() *cobra.Command {
	var o benchCoordOptions
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Simulate N workers against a real 3-node coordinator cluster",
		Long: `Starts a 3-node coordinator cluster (three loom coordinator processes,
real gRPC and Raft on loopback, raft-boltdb on disk in a temporary
directory) and N simulated workers in this process: lightweight clients that
register (pinned round-robin to J jobs), follow their job's plan through a
WatchPlan stream as loom worker does, heartbeat at the interval the
coordinator gives them, and report a step of their generation every --step
while their plan holds them. Then, in turn:

  steady    --duration with no churn: Raft entries per minute (and by
            command, from the leader's counters), heartbeats per second
            handled, the p50/p99 heartbeat latency the workers saw, the CPU
            (percent of one core) of each node, the leader's RSS, and this
            process's CPU (the simulated workers share the machine).
  churn     --churn-duration with --churn of the workers leaving per minute,
            each replaced by a joiner: leavers alternate between a silence
            (it stops, as on SIGKILL, and a peer of its job reports the
            broken ring, as its ring neighbours would) and a drain. Entries
            per minute again, and the time from each event to the plan
            that shows it.
  failover  (--failover) SIGKILL the leader, register a worker at once, and
            time the new leader's first answered heartbeat and the plan
            that holds the new worker; then wait a lease and count live
            workers expired (the goal is none).
  planner   (--planner) the planner (the code the leader runs) on N workers with
            --planner-stages pipeline stages of a 96-block GPT.

Every plan a worker's stream delivers is checked: none twice, and at the
end every live worker holds its job's newest generation. Elections during
the steady measurement are counted: on a loaded machine a missed Raft
heartbeat moves the leader, and the figures then mix leaders.`,
		Example: `  loom bench coordinator --workers 100 --jobs 4 --duration 60s
  loom bench coordinator --workers 1000 --jobs 10 --churn 0.01 --json
  loom bench coordinator --workers 5000 --jobs 10 --failure-confirm 4s --lease 20s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			r, err := runBenchCoordinator(cmd.Context(), o, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if o.jsonOut {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
			}
			r.print(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.workers, "workers", 100, "simulated workers")
	f.IntVar(&o.jobs, "jobs", 1, "jobs; worker i is pinned to job i mod J")
	f.IntVar(&o.conns, "conns", 4, "gRPC connections the simulated workers share")
	f.DurationVar(&o.duration, "duration", time.Minute, "steady measurement, no churn")
	f.DurationVar(&o.warmup, "warmup", 10*time.Second, "time after every job has its full plan before measuring")
	f.DurationVar(&o.lease, "lease", 10*time.Second, "the coordinators' --lease")
	f.DurationVar(&o.confirm, "failure-confirm", time.Second, "the coordinators' --failure-confirm (workers heartbeat 4 times per window)")
	f.DurationVar(&o.stepEvery, "step", time.Second, "each worker reports one step this often")
	f.Float64Var(&o.churn, "churn", 0.01, "fraction of the workers that leave (and are replaced) per minute in the churn phase; 0 skips it")
	f.DurationVar(&o.churnDuration, "churn-duration", time.Minute, "length of the churn phase")
	f.BoolVar(&o.failover, "failover", true, "end with a leader kill")
	f.BoolVar(&o.planner, "planner", true, "end by timing the planner")
	f.IntSliceVar(&o.plannerStages, "planner-stages", []int{1, 8, 64}, "pipeline stages to time the planner at")
	f.BoolVar(&o.jsonOut, "json", false, "print one JSON object")
	return cmd
}

func (o benchCoordOptions) validate() error {
	switch {
	case o.workers < 1 || o.jobs < 1 || o.jobs > o.workers:
		return fmt.Errorf("--workers %d, --jobs %d: want workers >= jobs >= 1", o.workers, o.jobs)
	case o.conns < 1:
		return fmt.Errorf("--conns must be >= 1")
	case o.duration <= 0 || o.warmup < 0 || o.stepEvery <= 0:
		return fmt.Errorf("--duration and --step must be > 0, --warmup >= 0")
	case o.lease <= 0 || o.confirm <= 0:
		return fmt.Errorf("--lease and --failure-confirm must be > 0")
	case o.churn < 0 || o.churn > 1 || (o.churn > 0 && o.churnDuration <= 0):
		return fmt.Errorf("--churn %v: want a fraction in [0, 1] per minute, and --churn-duration > 0", o.churn)
	case o.churn > 0 && o.workers < 2*o.jobs:
		return fmt.Errorf("--churn needs at least 2 workers per job (a leaver's peer reports it)")
	}
	for _, st := range o.plannerStages {
		if st < 1 || st > plannerBlocks {
			return fmt.Errorf("--planner-stages %d: want 1..%d", st, plannerBlocks)
		}
	}
	return nil
}

// benchCoordResult is what one run measured.
type benchCoordResult struct {
	Workers          int               `json:"workers"`
	Jobs             int               `json:"jobs"`
	Seconds          float64           `json:"seconds"`
	HeartbeatMs      int64             `json:"heartbeat_interval_ms"`
	EntriesPerMinute float64           `json:"raft_entries_per_minute"`
	EntriesByKind    map[string]uint64 `json:"raft_entries_by_kind"`
	HeartbeatsPerSec float64           `json:"heartbeats_per_second"`        // answered by the leaders (their counters)
	ClientHBPerSec   float64           `json:"client_heartbeats_per_second"` // answered, as the workers counted them
	HeartbeatP50Ms   float64           `json:"heartbeat_p50_ms"`
	HeartbeatP99Ms   float64           `json:"heartbeat_p99_ms"`
	HeartbeatErrors  uint64            `json:"heartbeat_errors"`
	ReportsPerSec    float64           `json:"progress_reports_per_second"`
	ReportErrors     uint64            `json:"progress_report_errors"`
	LeaderCPUPercent float64           `json:"leader_cpu_percent"`
	LeaderRSSMiB     float64           `json:"leader_rss_mib"`
	LeaderPeakMiB    float64           `json:"leader_peak_rss_mib"`
	NodeCPUPercent   []float64         `json:"node_cpu_percent"` // c0, c1, c2
	ClientCPUPercent float64           `json:"client_cpu_percent"`
	Leader           string            `json:"leader"` // when the measurement began
	Elections        uint64            `json:"elections"`
	LeaderChanged    bool              `json:"leader_changed"`

	Churn *churnResult    `json:"churn,omitempty"`
	Fail  *failoverResult `json:"failover,omitempty"`
	Plans planCheck       `json:"plans"`

	Planner []plannerTime `json:"planner,omitempty"`
}

// churnResult is the churn phase.
type churnResult struct {
	PerMinute        float64           `json:"fraction_per_minute"`
	Seconds          float64           `json:"seconds"`
	Silenced         int               `json:"silenced"`
	Drained          int               `json:"drained"`
	Joined           int               `json:"joined"`
	EntriesPerMinute float64           `json:"raft_entries_per_minute"`
	EntriesByKind    map[string]uint64 `json:"raft_entries_by_kind"`
	SilenceToPlan    timings           `json:"silence_to_plan"`
	DrainToPlan      timings           `json:"drain_to_plan"`
	JoinToPlan       timings           `json:"join_to_plan"`
	Unseen           int               `json:"events_no_plan_showed"`
}

// failoverResult is the leader kill.
type failoverResult struct {
	Killed       string  `json:"killed"`
	NewLeader    string  `json:"new_leader"`
	ServingMs    float64 `json:"kill_to_heartbeat_answered_ms"`
	JoinPlanMs   float64 `json:"kill_to_plan_with_new_worker_ms"`
	WatchedS     float64 `json:"watched_seconds"`
	LiveExpired  int     `json:"live_workers_expired"`
	LeaseExpired float64 `json:"new_leader_lease_expiries"`
}

// planCheck is what the workers' plan streams delivered over the run.
type planCheck struct {
	Delivered int64 `json:"delivered"`
	Twice     int64 `json:"delivered_twice"`
	Behind    int   `json:"live_workers_behind_at_end"`
}

// plannerTime is one planner timing: the median of a few runs.
type plannerTime struct {
	Workers int     `json:"workers"`
	Stages  int     `json:"stages"`
	Ms      float64 `json:"ms"`
}

func (r *benchCoordResult) print(w io.Writer) {
	fmt.Fprintf(w, "workers %d, jobs %d, measured %.0f s, heartbeat every %d ms, leader %s\n", r.Workers, r.Jobs, r.Seconds, r.HeartbeatMs, r.Leader)
	printEntries := func(perMin float64, byKind map[string]uint64) {
		fmt.Fprintf(w, "raft entries/min     %.1f\n", perMin)
		for _, k := range slices.Sorted(maps.Keys(byKind)) {
			fmt.Fprintf(w, "  %-22s %d\n", k, byKind[k])
		}
	}
	printEntries(r.EntriesPerMinute, r.EntriesByKind)
	fmt.Fprintf(w, "heartbeats/s handled %.0f by the leader(s), %.0f answered to the workers (errors %d)\n", r.HeartbeatsPerSec, r.ClientHBPerSec, r.HeartbeatErrors)
	fmt.Fprintf(w, "heartbeat latency    p50 %.2f ms, p99 %.2f ms\n", r.HeartbeatP50Ms, r.HeartbeatP99Ms)
	fmt.Fprintf(w, "progress reports/s   %.0f (errors %d)\n", r.ReportsPerSec, r.ReportErrors)
	fmt.Fprintf(w, "leader CPU           %.1f%% of a core, RSS %.1f MiB (peak %.1f MiB)\n", r.LeaderCPUPercent, r.LeaderRSSMiB, r.LeaderPeakMiB)
	var cpus []string
	for i, c := range r.NodeCPUPercent {
		cpus = append(cpus, fmt.Sprintf("c%d %.1f%%", i, c))
	}
	fmt.Fprintf(w, "nodes' CPU           %s of a core\n", strings.Join(cpus, ", "))
	fmt.Fprintf(w, "client CPU           %.1f%% of a core (the simulated workers)\n", r.ClientCPUPercent)
	if r.LeaderChanged {
		fmt.Fprintf(w, "the leader changed during the measurement (%d elections): the figures mix leaders\n", r.Elections)
	}
	if c := r.Churn; c != nil {
		fmt.Fprintf(w, "\nchurn %.1f%%/min for %.0f s: %d silenced, %d drained, %d joined\n", 100*c.PerMinute, c.Seconds, c.Silenced, c.Drained, c.Joined)
		printEntries(c.EntriesPerMinute, c.EntriesByKind)
		fmt.Fprintf(w, "silence -> plan      %s\n", c.SilenceToPlan)
		fmt.Fprintf(w, "drain -> plan        %s\n", c.DrainToPlan)
		fmt.Fprintf(w, "join -> plan         %s\n", c.JoinToPlan)
		if c.Unseen > 0 {
			fmt.Fprintf(w, "events no plan showed: %d\n", c.Unseen)
		}
	}
	if f := r.Fail; f != nil {
		fmt.Fprintf(w, "\nleader %s SIGKILLed: %s leads; first heartbeat answered after %.0f ms, a worker registered at the kill planned after %.0f ms\n",
			f.Killed, f.NewLeader, f.ServingMs, f.JoinPlanMs)
		fmt.Fprintf(w, "live workers expired in the %.0f s after: %d (new leader's lease expiries %.0f)\n", f.WatchedS, f.LiveExpired, f.LeaseExpired)
	}
	fmt.Fprintf(w, "\nplans delivered      %d to the workers' streams, %d twice; live workers behind their job's generation at the end: %d\n",
		r.Plans.Delivered, r.Plans.Twice, r.Plans.Behind)
	for _, p := range r.Planner {
		fmt.Fprintf(w, "planner              %d workers x %d stages: %.1f ms\n", p.Workers, p.Stages, p.Ms)
	}
}

// benchNode is one coordinator process of the simulated cluster.
type benchNode struct {
	id, grpc, raft, metrics, log string
	cmd                          *exec.Cmd
	done                         chan struct{} // closed when the process exited, with exit set
	exit                         error
}

// benchRun is one run of the simulator.
type benchRun struct {
	o      benchCoordOptions
	logw   io.Writer
	nodes  []*benchNode
	client func(i int) api.CoordinatorClient
	jobs   []string
	wg     sync.WaitGroup
	ctx    context.Context // the workers'
	st     simStats
	waits  planWaits

	mu   sync.Mutex
	sims []*simWorker
	next int // the next worker's number
}

func runBenchCoordinator(ctx context.Context, o benchCoordOptions, logw io.Writer) (*benchCoordResult, error) {
	dir, err := os.MkdirTemp("", "loom-bench-coordinator-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b := &benchRun{o: o, logw: logw, waits: planWaits{took: map[string][]time.Duration{}}}
	b.nodes, err = startBenchCluster(ctx, dir, o)
	defer stopBenchCluster(b.nodes)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, n := range b.nodes {
		addrs = append(addrs, n.grpc)
	}
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = api.Dial(addrs); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}
	b.client = func(i int) api.CoordinatorClient { return api.NewCoordinatorClient(conns[i%len(conns)]) }
	fmt.Fprintf(logw, "cluster of 3 up in %s; registering %d workers to %d jobs\n", dir, o.workers, o.jobs)

	b.jobs = make([]string, o.jobs)
	perJob := (o.workers + o.jobs - 1) / o.jobs
	for j := range b.jobs {
		r, err := b.client(0).SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{
			Name: fmt.Sprintf("bench-%d", j), GlobalBatch: int64(8 * perJob), MinWorkers: 1}})
		if err != nil {
			return nil, fmt.Errorf("submit: %w", err)
		}
		b.jobs[j] = r.GetJob().GetId()
	}
	sims := make([]*simWorker, o.workers)
	var regErr atomic.Pointer[error]
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range sims {
		sims[i] = b.newSim(b.jobs[i%o.jobs])
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := sims[i].register(ctx, 20000+i); err != nil {
				regErr.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	if e := regErr.Load(); e != nil {
		return nil, *e
	}
	hbEvery := sims[0].every
	fmt.Fprintf(logw, "registered; heartbeat every %v; waiting for every job's full plan\n", hbEvery)

	rctx, stop := context.WithCancel(ctx)
	b.ctx = rctx
	defer b.wg.Wait()
	defer stop()
	for _, s := range sims {
		b.startSim(s)
	}
	for i, j := range b.jobs {
		b.wg.Go(func() { b.waits.observe(rctx, b.client(i), j) })
	}
	if err := waitFullPlans(ctx, b.client(0), b.jobs, o.workers); err != nil {
		return nil, err
	}
	fmt.Fprintf(logw, "every job planned; warming up %v, then measuring %v\n", o.warmup, o.duration)
	if err := sleepCtx(ctx, o.warmup); err != nil {
		return nil, err
	}
	r, err := b.steady(ctx)
	if err != nil {
		return nil, err
	}
	r.HeartbeatMs = hbEvery.Milliseconds()
	if o.churn > 0 {
		fmt.Fprintf(logw, "churn: %.1f%% of the workers a minute for %v\n", 100*o.churn, o.churnDuration)
		if r.Churn, err = b.churnPhase(ctx); err != nil {
			return nil, err
		}
	}
	if o.failover {
		fmt.Fprintf(logw, "failover: killing the leader\n")
		if r.Fail, err = b.failoverPhase(ctx); err != nil {
			return nil, err
		}
	}
	if r.Plans, err = b.checkPlans(ctx); err != nil {
		return nil, err
	}
	stop()
	b.wg.Wait()
	for _, st := range o.plannerStages {
		if !o.planner {
			break
		}
		if st > o.workers {
			fmt.Fprintf(logw, "planner: %d stages need at least %d workers; skipped\n", st, st)
			continue
		}
		fmt.Fprintf(logw, "planner: %d workers x %d stages\n", o.workers, st)
		r.Planner = append(r.Planner, timePlanner(o.workers, st))
	}
	return r, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newSim makes the next simulated worker, pinned to job.
func (b *benchRun) newSim(job string) *simWorker {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := &simWorker{id: fmt.Sprintf("sim-%05d", b.next), job: job, c: b.client(b.next)}
	b.next++
	b.sims = append(b.sims, w)
	return w
}

func (b *benchRun) startSim(w *simWorker) { w.start(b.ctx, &b.wg, b.o.stepEvery, &b.st) }

// live returns the workers that still follow their plans.
func (b *benchRun) live() []*simWorker {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(b.sims), func(w *simWorker) bool { return w.gone.Load() || w.incarnation == 0 })
}

// benchSnap is every node's metrics and CPU time, and this process's.
type benchSnap struct {
	m   []benchMetrics
	cpu []time.Duration
}

func (b *benchRun) snap(ctx context.Context) (benchSnap, error) {
	s := benchSnap{m: make([]benchMetrics, len(b.nodes)), cpu: make([]time.Duration, len(b.nodes)+1)}
	for i, n := range b.nodes {
		select {
		case <-n.done:
			continue // killed
		default:
		}
		var err error
		if s.m[i], err = scrapeMetrics(ctx, n.metrics); err != nil {
			return s, err
		}
		s.cpu[i], _ = procCPU(n.cmd.Process.Pid)
	}
	s.cpu[len(b.nodes)], _ = procCPU(os.Getpid())
	return s, nil
}

// entries is what a node's log grew by between two scrapes, in all and
// by command.
func entries(m0, m1 benchMetrics) (float64, map[string]uint64) {
	kinds := map[string]uint64{}
	before := m0.byLabel("loom_raft_entries_applied_total", "kind")
	for k, v := range m1.byLabel("loom_raft_entries_applied_total", "kind") {
		if d := v - before[k]; d > 0 {
			kinds[k] = uint64(d)
		}
	}
	return m1.get("loom_raft_commit_index") - m0.get("loom_raft_commit_index"), kinds
}

// steady measures --duration with no churn.
func (b *benchRun) steady(ctx context.Context) (*benchCoordResult, error) {
	o := b.o
	leader, err := benchLeader(ctx, b.nodes)
	if err != nil {
		return nil, err
	}
	s0, err := b.snap(ctx)
	if err != nil {
		return nil, err
	}
	b.st.reset()
	t0 := time.Now()
	if err := sleepCtx(ctx, o.duration); err != nil {
		return nil, err
	}
	el := time.Since(t0)
	lats, hbErrs, reports, repErrs := b.st.take()
	s1, err := b.snap(ctx)
	if err != nil {
		return nil, err
	}
	li := slices.Index(b.nodes, leader)
	rss, peak := procRSS(leader.cmd.Process.Pid)
	after, _ := benchLeader(ctx, b.nodes)
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / el.Seconds() }
	n, kinds := entries(s0.m[li], s1.m[li])
	r := &benchCoordResult{
		Workers: o.workers, Jobs: o.jobs, Seconds: el.Seconds(), Leader: leader.id,
		EntriesPerMinute: n / el.Minutes(), EntriesByKind: kinds,
		ClientHBPerSec:  float64(len(lats)) / el.Seconds(),
		HeartbeatErrors: hbErrs, ReportErrors: repErrs, ReportsPerSec: float64(reports) / el.Seconds(),
		LeaderCPUPercent: pct(s1.cpu[li] - s0.cpu[li]),
		ClientCPUPercent: pct(s1.cpu[len(b.nodes)] - s0.cpu[len(b.nodes)]),
		LeaderRSSMiB:     rss / (1 << 20), LeaderPeakMiB: peak / (1 << 20),
	}
	for i := range b.nodes {
		r.HeartbeatsPerSec += (s1.m[i].get("loom_coordinator_heartbeats_total") - s0.m[i].get("loom_coordinator_heartbeats_total")) / el.Seconds()
		r.NodeCPUPercent = append(r.NodeCPUPercent, pct(s1.cpu[i]-s0.cpu[i]))
	}
	r.Elections = r.EntriesByKind["leader_elected"]
	r.LeaderChanged = r.Elections > 0 || after == nil || after.id != leader.id
	r.HeartbeatP50Ms, r.HeartbeatP99Ms = quantileMs(lats, 0.50), quantileMs(lats, 0.99)
	return r, nil
}

// churnPhase makes --churn of the workers leave per minute, each replaced
// by a joiner, for --churn-duration.
func (b *benchRun) churnPhase(ctx context.Context) (*churnResult, error) {
	o := b.o
	leader, err := benchLeader(ctx, b.nodes)
	if err != nil {
		return nil, err
	}
	li := slices.Index(b.nodes, leader)
	s0, err := b.snap(ctx)
	if err != nil {
		return nil, err
	}
	c := &churnResult{PerMinute: o.churn}
	every := time.Duration(float64(time.Minute) / (o.churn * float64(o.workers)))
	tick := time.NewTicker(every)
	defer tick.Stop()
	t0 := time.Now()
	end := time.After(o.churnDuration)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-end:
			done = true
			continue
		case <-tick.C:
		}
		job, err := b.leave(ctx, c.Silenced <= c.Drained)
		if err != nil {
			return nil, err
		}
		if c.Silenced <= c.Drained {
			c.Silenced++
		} else {
			c.Drained++
		}
		if err := b.join(ctx, job, "join"); err != nil {
			return nil, err
		}
		c.Joined++
	}
	c.Seconds = time.Since(t0).Seconds()
	c.Unseen = b.waits.wait(ctx, o.lease+5*time.Second)
	s1, err := b.snap(ctx)
	if err != nil {
		return nil, err
	}
	n, kinds := entries(s0.m[li], s1.m[li])
	c.EntriesPerMinute, c.EntriesByKind = n/time.Since(t0).Minutes(), kinds
	b.waits.mu.Lock()
	c.SilenceToPlan, c.DrainToPlan, c.JoinToPlan = summarise(b.waits.took["silence"]), summarise(b.waits.took["drain"]), summarise(b.waits.took["join"])
	b.waits.mu.Unlock()
	return c, nil
}

// leave silences (its peer then reports the broken ring) or drains a live
// worker in the plan of a job that keeps another; it returns the job.
func (b *benchRun) leave(ctx context.Context, silence bool) (string, error) {
	live := b.live()
	rand.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	for _, w := range live {
		if !w.inPlan.Load() {
			continue
		}
		i := slices.IndexFunc(live, func(p *simWorker) bool { return p != w && p.job == w.job && p.inPlan.Load() })
		if i < 0 {
			continue
		}
		peer := live[i]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t0 := time.Now()
		if !silence {
			w.gone.Store(true) // it leaves: no longer counted as following
			b.waits.add("drain", w.job, w.id, false, t0)
			_, err := w.c.DrainWorker(cctx, &api.DrainWorkerRequest{WorkerId: w.id})
			return w.job, err
		}
		w.gone.Store(true)
		w.stop()
		b.waits.add("silence", w.job, w.id, false, t0)
		b.wg.Go(func() { b.reportLost(b.ctx, peer, w) })
		return w.job, nil
	}
	return "", errors.New("churn: no job has two workers in its plan")
}

// reportLost is peer's side of w's silence: like a ring neighbour, it
// reports each generation that still holds w failed, until a plan leaves w
// out (or a lease has passed).
func (b *benchRun) reportLost(ctx context.Context, peer, w *simWorker) {
	var reported int64
	deadline := time.Now().Add(b.o.lease)
	for ctx.Err() == nil && time.Now().Before(deadline) && b.waits.pendingFor(w.id) {
		if g := peer.gen.Load(); g != reported {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := peer.c.ReportFailure(cctx, &api.ReportFailureRequest{JobId: w.job, WorkerId: peer.id, Incarnation: peer.incarnation,
				Generation: g, Error: fmt.Sprintf("peer lost: %s stopped (simulated)", w.id)})
			cancel()
			if err == nil {
				reported = g
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// join registers a new worker to job and starts it, timing its way into a
// plan as kind.
func (b *benchRun) join(ctx context.Context, job, kind string) error {
	w := b.newSim(job)
	b.mu.Lock()
	port := 20000 + b.next
	b.mu.Unlock()
	b.waits.add(kind, job, w.id, true, time.Now())
	if err := w.register(ctx, port); err != nil {
		return err
	}
	b.startSim(w)
	return nil
}

// failoverPhase SIGKILLs the leader, registers a worker at once, and
// times the new leader's service; then watches a lease for expiries.
func (b *benchRun) failoverPhase(ctx context.Context) (*failoverResult, error) {
	leader, err := benchLeader(ctx, b.nodes)
	if err != nil {
		return nil, err
	}
	live := b.live()
	if len(live) == 0 {
		return nil, errors.New("failover: no live worker")
	}
	probe := live[0]
	t0 := time.Now()
	if err := leader.cmd.Process.Kill(); err != nil {
		return nil, err
	}
	<-leader.done
	joined := make(chan error, 1)
	go func() { joined <- b.join(ctx, b.jobs[0], "failover") }()
	f := &failoverResult{Killed: leader.id}
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := probe.c.Heartbeat(cctx, &api.HeartbeatRequest{WorkerId: probe.id, Incarnation: probe.incarnation})
		cancel()
		if err == nil {
			f.ServingMs = float64(time.Since(t0).Microseconds()) / 1e3
			break
		}
		if time.Since(t0) > time.Minute || ctx.Err() != nil {
			return nil, fmt.Errorf("failover: no heartbeat answered a minute after the kill: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := <-joined; err != nil {
		return nil, fmt.Errorf("failover: %w", err)
	}
	if b.waits.wait(ctx, time.Minute) > 0 {
		return nil, errors.New("failover: the worker registered at the kill is in no plan a minute later")
	}
	b.waits.mu.Lock()
	f.JoinPlanMs = quantileMs(b.waits.took["failover"], 0.5)
	b.waits.mu.Unlock()
	nl, err := benchLeader(ctx, b.nodes)
	if err != nil {
		return nil, err
	}
	f.NewLeader = nl.id
	m0, err := scrapeMetrics(ctx, nl.metrics)
	if err != nil {
		return nil, err
	}
	// A live worker's lease would end a lease after its last heartbeat to
	// the old leader at the latest: watch past that.
	watch := b.o.lease + 2*b.o.confirm
	f.WatchedS = (time.Since(t0) + watch).Seconds()
	if err := sleepCtx(ctx, watch); err != nil {
		return nil, err
	}
	m1, err := scrapeMetrics(ctx, nl.metrics)
	if err != nil {
		return nil, err
	}
	f.LeaseExpired = m1.get("loom_coordinator_lease_expiries_total") - m0.get("loom_coordinator_lease_expiries_total")
	for _, w := range b.live() {
		if w.expired.Load() {
			f.LiveExpired++
		}
	}
	return f, nil
}

// checkPlans waits until every live worker holds its job's generation and
// sums what the streams delivered.
func (b *benchRun) checkPlans(ctx context.Context) (planCheck, error) {
	gens := map[string]int64{}
	for _, j := range b.jobs {
		r, err := b.client(0).GetJob(ctx, &api.GetJobRequest{JobId: j})
		if err != nil {
			return planCheck{}, err
		}
		gens[j] = r.GetJob().GetGeneration()
	}
	var pc planCheck
	deadline := time.Now().Add(10 * time.Second)
	for {
		pc.Behind = 0
		for _, w := range b.live() {
			if w.gen.Load() < gens[w.job] {
				pc.Behind++
			}
		}
		if pc.Behind == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.mu.Lock()
	for _, w := range b.sims {
		pc.Delivered += w.plans.Load()
		pc.Twice += w.dups.Load()
	}
	b.mu.Unlock()
	return pc, nil
}

// startBenchCluster starts three loom coordinator processes (this
// binary), the first bootstrapping, and waits until all three are members
// with a leader.
func startBenchCluster(ctx context.Context, dir string, o benchCoordOptions) ([]*benchNode, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ports, err := benchPorts(9)
	if err != nil {
		return nil, err
	}
	nodes := make([]*benchNode, 3)
	for i := range nodes {
		n := &benchNode{id: fmt.Sprintf("c%d", i), grpc: ports[3*i], raft: ports[3*i+1], metrics: ports[3*i+2],
			log: filepath.Join(dir, fmt.Sprintf("c%d.log", i)), done: make(chan struct{})}
		nodes[i] = n
		args := []string{"coordinator", "--id", n.id, "--data-dir", filepath.Join(dir, n.id), "--grpc-addr", n.grpc, "--raft-addr", n.raft,
			"--metrics-addr", n.metrics, "--lease", o.lease.String(), "--failure-confirm", o.confirm.String(), "--log-level", "warn"}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", nodes[0].grpc)
		}
		lf, err := os.Create(n.log)
		if err != nil {
			return nodes, err
		}
		n.cmd = exec.Command(exe, args...)
		n.cmd.Stdout, n.cmd.Stderr = lf, lf
		n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = n.cmd.Start()
		_ = lf.Close()
		if err != nil {
			n.cmd = nil
			return nodes, err
		}
		go func() { n.exit = n.cmd.Wait(); close(n.done) }()
		if err := waitMembers(ctx, n, i+1); err != nil {
			return nodes, err
		}
	}
	return nodes, nil
}

// waitMembers waits until node n answers with a leader and want members.
func waitMembers(ctx context.Context, n *benchNode, want int) error {
	conn, err := api.Dial([]string{n.grpc})
	if err != nil {
		return err
	}
	defer conn.Close()
	cl := api.NewClusterClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cl.ClusterStatus(cctx, &api.ClusterStatusRequest{})
		cancel()
		if err == nil && st.GetLeaderGrpcAddr() != "" && len(st.GetMembers()) == want {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("coordinator %s exited (%v):\n%s", n.id, n.exit, tailFile(n.log, 20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinator %s: no leader with %d members after 30 s (%v):\n%s", n.id, want, err, tailFile(n.log, 20))
		}
	}
}

func stopBenchCluster(nodes []*benchNode) {
	for _, n := range nodes {
		if n != nil && n.cmd != nil {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range nodes {
		if n == nil || n.cmd == nil {
			continue
		}
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	}
}

// benchPorts returns n distinct free loopback addresses.
func benchPorts(n int) ([]string, error) {
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out, nil
}

func tailFile(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

// benchLeader returns the node that leads now.
func benchLeader(ctx context.Context, nodes []*benchNode) (*benchNode, error) {
	for _, n := range nodes {
		conn, err := api.Dial([]string{n.grpc})
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := api.NewClusterClient(conn).ClusterStatus(cctx, &api.ClusterStatusRequest{})
		cancel()
		_ = conn.Close()
		if err != nil {
			continue
		}
		for _, m := range nodes {
			if m.id == st.GetLeaderId() {
				return m, nil
			}
		}
	}
	return nil, errors.New("no coordinator names a leader")
}

// waitFullPlans waits until the plans of jobs hold workers ranks in all.
func waitFullPlans(ctx context.Context, c api.CoordinatorClient, jobs []string, workers int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := 0
		for _, j := range jobs {
			r, err := c.GetJob(ctx, &api.GetJobRequest{JobId: j})
			if err == nil {
				n += len(r.GetPlan().GetRanks())
			}
		}
		if n == workers {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("plans hold %d of %d workers after 2 minutes", n, workers)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// simWorker is one simulated worker: it registers, follows its job's plan
// through a WatchPlan stream (as loom worker does), heartbeats at the
// coordinator's interval, and reports a step of its generation every step
// while its plan holds it. Drained, it deregisters once out of the plan;
// silenced (stop), it just stops, as a SIGKILLed process would.
type simWorker struct {
	id, job     string
	c           api.CoordinatorClient
	incarnation int64
	every       time.Duration
	stop        context.CancelFunc // set by start

	gen     atomic.Int64 // newest generation its watch delivered
	inPlan  atomic.Bool  // that plan holds it
	plans   atomic.Int64 // plans its watch delivered
	dups    atomic.Int64 // of which not newer than the one before: delivered twice
	gone    atomic.Bool  // silenced or deregistered: no longer follows
	expired atomic.Bool  // a heartbeat while it lived was answered "unknown worker"
}

func (w *simWorker) register(ctx context.Context, port int) error {
	prof := &api.DeviceProfile{DeviceName: "sim", Cores: 1, Threads: 1, Gflops: map[string]float64{"f32": 10}, MemoryBytes: 1 << 30,
		CollectiveAddr: fmt.Sprintf("127.0.0.1:%d", port)}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := w.c.RegisterWorker(cctx, &api.RegisterWorkerRequest{WorkerId: w.id, JobId: w.job, Profile: prof})
	if err != nil {
		return fmt.Errorf("register %s: %w", w.id, err)
	}
	w.incarnation = r.GetWorker().GetRegisteredUnixNano()
	w.every = time.Duration(r.GetHeartbeatIntervalMs()) * time.Millisecond
	if w.every <= 0 {
		w.every = time.Second
	}
	return nil
}

// simStats gathers what the simulated workers saw. Safe for concurrent use.
type simStats struct {
	mu       sync.Mutex
	lats     []time.Duration
	hbErrs   uint64
	reports  uint64
	repErrs  uint64
	measured bool
}

func (s *simStats) reset() {
	s.mu.Lock()
	s.lats, s.hbErrs, s.reports, s.repErrs, s.measured = s.lats[:0], 0, 0, 0, true
	s.mu.Unlock()
}

func (s *simStats) take() ([]time.Duration, uint64, uint64, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.measured = false
	return slices.Clone(s.lats), s.hbErrs, s.reports, s.repErrs
}

// start runs the worker until ctx ends or it is stopped; wg tracks it.
func (w *simWorker) start(ctx context.Context, wg *sync.WaitGroup, stepEvery time.Duration, st *simStats) {
	ctx, w.stop = context.WithCancel(ctx)
	wg.Go(func() { w.watch(ctx) })
	wg.Go(func() { w.run(ctx, stepEvery, st) })
}

// watch follows the job's plan, reconnecting (after the newest generation
// it has) when a stream breaks, as on a coordinator's death.
func (w *simWorker) watch(ctx context.Context) {
	for ctx.Err() == nil {
		stream, err := w.c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: w.job, AfterGeneration: w.gen.Load()})
		for err == nil {
			var p *api.Plan
			if p, err = stream.Recv(); err != nil {
				break
			}
			w.plans.Add(1)
			if p.GetGeneration() <= w.gen.Load() {
				w.dups.Add(1)
				continue
			}
			w.inPlan.Store(slices.ContainsFunc(p.GetRanks(), func(r *api.Rank) bool { return r.GetWorkerId() == w.id }))
			w.gen.Store(p.GetGeneration())
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *simWorker) run(ctx context.Context, stepEvery time.Duration, st *simStats) {
	// Spread the first heartbeats over one interval, as real workers
	// registered at different moments are.
	select {
	case <-ctx.Done():
		return
	case <-time.After(rand.N(w.every)):
	}
	hb := time.NewTicker(w.every)
	defer hb.Stop()
	step := time.NewTicker(stepEvery)
	defer step.Stop()
	var n int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-hb.C:
			t := time.Now()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := w.c.Heartbeat(cctx, &api.HeartbeatRequest{WorkerId: w.id, Incarnation: w.incarnation})
			cancel()
			d := time.Since(t)
			if ctx.Err() != nil {
				return
			}
			if api.ReasonOf(err) == api.ReasonUnknownWorker {
				w.expired.Store(true)
			}
			st.mu.Lock()
			if st.measured {
				if err != nil {
					st.hbErrs++
				} else {
					st.lats = append(st.lats, d)
				}
			}
			st.mu.Unlock()
			if r.GetDraining() && !w.inPlan.Load() {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, _ = w.c.DeregisterWorker(cctx, &api.DeregisterWorkerRequest{WorkerId: w.id, Incarnation: w.incarnation})
				cancel()
				w.gone.Store(true)
				w.stop()
				return
			}
		case <-step.C:
			gen := w.gen.Load()
			if gen == 0 || !w.inPlan.Load() {
				continue
			}
			n++
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := w.c.ReportProgress(cctx, &api.ReportProgressRequest{JobId: w.job, WorkerId: w.id, Generation: gen, Step: n,
				Loss: 1 / float64(n), Samples: 8, StepSeconds: 0.1})
			cancel()
			if ctx.Err() != nil {
				return
			}
			st.mu.Lock()
			if st.measured {
				st.reports++
				if err != nil {
					st.repErrs++
				}
			}
			st.mu.Unlock()
		}
	}
}

// planWaits times events until a plan shows them: a lost or drained
// worker out of its job's plan, a joined one in it. One observer stream
// per job reports each plan it sees.
type planWaits struct {
	mu      sync.Mutex
	pending []planWait
	took    map[string][]time.Duration // by kind
}

type planWait struct {
	kind, job, worker string
	in                bool // wait for the worker to be in the plan (else out)
	t0                time.Time
}

func (w *planWaits) add(kind, job, worker string, in bool, t0 time.Time) {
	w.mu.Lock()
	w.pending = append(w.pending, planWait{kind, job, worker, in, t0})
	w.mu.Unlock()
}

func (w *planWaits) see(p *api.Plan, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = slices.DeleteFunc(w.pending, func(e planWait) bool {
		if e.job != p.GetJobId() {
			return false
		}
		in := slices.ContainsFunc(p.GetRanks(), func(r *api.Rank) bool { return r.GetWorkerId() == e.worker })
		if in != e.in {
			return false
		}
		w.took[e.kind] = append(w.took[e.kind], at.Sub(e.t0))
		return true
	})
}

// pendingFor reports whether an event of worker waits for its plan.
func (w *planWaits) pendingFor(worker string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.ContainsFunc(w.pending, func(e planWait) bool { return e.worker == worker })
}

// wait returns once nothing is pending, or after d: what is still pending.
func (w *planWaits) wait(ctx context.Context, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		w.mu.Lock()
		n := len(w.pending)
		w.mu.Unlock()
		if n == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// observe follows job's plans for w until ctx ends.
func (w *planWaits) observe(ctx context.Context, c api.CoordinatorClient, job string) {
	var after int64
	for ctx.Err() == nil {
		stream, err := c.WatchPlan(ctx, &api.WatchPlanRequest{JobId: job, AfterGeneration: after})
		for err == nil {
			var p *api.Plan
			if p, err = stream.Recv(); err == nil {
				w.see(p, time.Now())
				after = p.GetGeneration()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// timings summarises one kind of wait: count, median and largest, in ms.
type timings struct {
	N     int     `json:"n"`
	P50Ms float64 `json:"p50_ms"`
	MaxMs float64 `json:"max_ms"`
}

func summarise(ds []time.Duration) timings {
	if len(ds) == 0 {
		return timings{}
	}
	return timings{N: len(ds), P50Ms: quantileMs(ds, 0.5), MaxMs: quantileMs(ds, 1)}
}

func (t timings) String() string {
	if t.N == 0 {
		return "none"
	}
	return fmt.Sprintf("%d, median %.0f ms, max %.0f ms", t.N, t.P50Ms, t.MaxMs)
}

func quantileMs(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / 1e6
}

// benchMetrics is one scrape of a Prometheus text page: series → value.
type benchMetrics map[string]float64

func scrapeMetrics(ctx context.Context, addr string) (benchMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	out := benchMetrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// get is the sum of every series of metric name.
func (m benchMetrics) get(name string) float64 {
	var sum float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// byLabel sums metric name's series by the value of label.
func (m benchMetrics) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		_, rest, ok := strings.Cut(k, label+`="`)
		if !ok {
			continue
		}
		val, _, _ := strings.Cut(rest, `"`)
		out[val] += v
	}
	return out
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// Fields 14 and 15 of stat (utime, stime), in clock ticks of 1/100 s
	// (USER_HZ on Linux).
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return time.Duration((ut + st) * float64(10*time.Millisecond)), nil
}

// procRSS is process pid's resident set and its peak, in bytes.
func procRSS(pid int) (rss, peak float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = v * 1024
		case "VmHWM:":
			peak = v * 1024
		}
	}
	return rss, peak
}

// plannerBlocks is the depth of the model the planner is timed on.
const plannerBlocks = 96

// timePlanner times scheduler.Compute, the leader's planner, for n workers
// of mixed speed, memory and link in a job of the given pipeline stages
// over a 96-block GPT (d_model 1024, context 1024, GPT-2's vocabulary):
// the median of up to 5 runs, fewer past 2 s.
func timePlanner(n, stages int) plannerTime {
	c := model.GPTConfig{Layers: plannerBlocks, Heads: 16, DModel: 1024, Context: 1024, Vocab: 50257}.Cost()
	m := &scheduler.ModelCost{Layers: plannerBlocks, EmbedFLOPs: c.EmbedFLOPs, BlockFLOPs: c.BlockFLOPs, HeadFLOPs: c.HeadFLOPs,
		EmbedParams: c.EmbedParams, BlockParams: c.BlockParams, HeadParams: c.HeadParams,
		BlockActBytes: c.BlockActBytes, HeadActBytes: c.HeadActBytes, BoundaryBytes: c.BoundaryBytes}
	ws := make([]scheduler.Worker, n)
	for i := range ws {
		ws[i] = scheduler.Worker{ID: fmt.Sprintf("w%05d", i), Addr: fmt.Sprintf("10.0.%d.%d:7000", i/250, i%250),
			Speed: 5 + float64(i*37%23), MemoryBytes: int64(16+i%3*8) << 30, LinkBytesPerSec: float64(1+i%4) * 1e9}
	}
	j := scheduler.Job{GlobalBatch: int64(8 * n), Stages: stages, Model: m}
	var runs []time.Duration
	t0 := time.Now()
	for len(runs) < 5 && (len(runs) == 0 || time.Since(t0) < 2*time.Second) {
		t := time.Now()
		if _, err := scheduler.Compute(j, ws); err != nil {
			return plannerTime{Workers: n, Stages: stages, Ms: -1}
		}
		runs = append(runs, time.Since(t))
	}
	return plannerTime{Workers: n, Stages: stages, Ms: quantileMs(runs, 0.5)}
}
