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
)

// benchCoordOptions are the flags of loom bench coordinator.
type benchCoordOptions struct {
	workers, jobs, conns int
	duration, warmup     time.Duration
	lease, confirm       time.Duration
	stepEvery            time.Duration
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
register (pinned round-robin to J jobs), heartbeat at the interval the
coordinator gives them, and report a step of their job's current generation
every --step. After --warmup it measures for --duration and prints Raft
entries per minute (and by command, from the leader's counters), heartbeats
per second handled, the p50/p99 heartbeat latency seen by the workers, the
CPU (percent of one core) of each node and RSS of the leader, and this
process's CPU (the simulated workers share the machine with the cluster).
Elections during the measurement are counted: on a loaded machine a missed
Raft heartbeat moves the leader, and the figures then mix leaders.

This is the first part of the issue-24 simulator: the workers follow their
generation through heartbeat answers (no WatchPlan streams yet), and there
is no churn yet.`,
		Example: `  loom bench coordinator --workers 100 --jobs 4 --duration 60s
  loom bench coordinator --workers 1000 --jobs 10 --duration 60s --json`,
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
	f.DurationVar(&o.duration, "duration", time.Minute, "measured time")
	f.DurationVar(&o.warmup, "warmup", 10*time.Second, "time after every job has its full plan before measuring")
	f.DurationVar(&o.lease, "lease", 10*time.Second, "the coordinators' --lease")
	f.DurationVar(&o.confirm, "failure-confirm", time.Second, "the coordinators' --failure-confirm (workers heartbeat 4 times per window)")
	f.DurationVar(&o.stepEvery, "step", time.Second, "each worker reports one step this often")
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
}

func (r *benchCoordResult) print(w io.Writer) {
	fmt.Fprintf(w, "workers %d, jobs %d, measured %.0f s, heartbeat every %d ms, leader %s\n", r.Workers, r.Jobs, r.Seconds, r.HeartbeatMs, r.Leader)
	fmt.Fprintf(w, "raft entries/min     %.1f\n", r.EntriesPerMinute)
	for _, k := range slices.Sorted(maps.Keys(r.EntriesByKind)) {
		fmt.Fprintf(w, "  %-22s %d\n", k, r.EntriesByKind[k])
	}
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
}

// benchNode is one coordinator process of the simulated cluster.
type benchNode struct {
	id, grpc, raft, metrics, log string
	cmd                          *exec.Cmd
	done                         chan struct{} // closed when the process exited, with exit set
	exit                         error
}

func runBenchCoordinator(ctx context.Context, o benchCoordOptions, logw io.Writer) (*benchCoordResult, error) {
	dir, err := os.MkdirTemp("", "loom-bench-coordinator-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	nodes, err := startBenchCluster(ctx, dir, o)
	defer stopBenchCluster(nodes)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.grpc)
	}
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = api.Dial(addrs); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}
	client := func(i int) api.CoordinatorClient { return api.NewCoordinatorClient(conns[i%len(conns)]) }
	fmt.Fprintf(logw, "cluster of 3 up in %s; registering %d workers to %d jobs\n", dir, o.workers, o.jobs)

	jobs := make([]string, o.jobs)
	perJob := (o.workers + o.jobs - 1) / o.jobs
	for j := range jobs {
		r, err := client(0).SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{
			Name: fmt.Sprintf("bench-%d", j), GlobalBatch: int64(8 * perJob), MinWorkers: 1}})
		if err != nil {
			return nil, fmt.Errorf("submit: %w", err)
		}
		jobs[j] = r.GetJob().GetId()
	}
	sims := make([]*simWorker, o.workers)
	var regErr atomic.Pointer[error]
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range sims {
		sims[i] = &simWorker{id: fmt.Sprintf("sim-%05d", i), job: jobs[i%o.jobs], c: client(i)}
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
	var st simStats
	for _, s := range sims {
		wg.Go(func() { s.run(rctx, o.stepEvery, &st) })
	}
	defer wg.Wait()
	defer stop()
	if err := waitFullPlans(ctx, client(0), jobs, o.workers); err != nil {
		return nil, err
	}
	fmt.Fprintf(logw, "every job planned; warming up %v, then measuring %v\n", o.warmup, o.duration)
	select {
	case <-time.After(o.warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	leader, err := benchLeader(ctx, nodes)
	if err != nil {
		return nil, err
	}
	snap := func() ([]benchMetrics, []time.Duration, error) {
		ms := make([]benchMetrics, len(nodes))
		cpus := make([]time.Duration, len(nodes)+1)
		for i, n := range nodes {
			if ms[i], err = scrapeMetrics(ctx, n.metrics); err != nil {
				return nil, nil, err
			}
			cpus[i], _ = procCPU(n.cmd.Process.Pid)
		}
		cpus[len(nodes)], _ = procCPU(os.Getpid())
		return ms, cpus, nil
	}
	m0, cpu0, err := snap()
	if err != nil {
		return nil, err
	}
	st.reset()
	t0 := time.Now()
	select {
	case <-time.After(o.duration):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	el := time.Since(t0)
	lats, hbErrs, reports, repErrs := st.take()
	m1, cpu1, err := snap()
	if err != nil {
		return nil, err
	}
	li := slices.Index(nodes, leader)
	rss, peak := procRSS(leader.cmd.Process.Pid)
	after, _ := benchLeader(ctx, nodes)
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / el.Seconds() }

	r := &benchCoordResult{
		Workers: o.workers, Jobs: o.jobs, Seconds: el.Seconds(), HeartbeatMs: hbEvery.Milliseconds(), Leader: leader.id,
		EntriesPerMinute: (m1[li].get("loom_raft_commit_index") - m0[li].get("loom_raft_commit_index")) / el.Minutes(),
		EntriesByKind:    map[string]uint64{},
		ClientHBPerSec:   float64(len(lats)) / el.Seconds(),
		HeartbeatErrors:  hbErrs, ReportErrors: repErrs, ReportsPerSec: float64(reports) / el.Seconds(),
		LeaderCPUPercent: pct(cpu1[li] - cpu0[li]),
		ClientCPUPercent: pct(cpu1[len(nodes)] - cpu0[len(nodes)]),
		LeaderRSSMiB:     rss / (1 << 20), LeaderPeakMiB: peak / (1 << 20),
	}
	for i := range nodes {
		r.HeartbeatsPerSec += (m1[i].get("loom_coordinator_heartbeats_total") - m0[i].get("loom_coordinator_heartbeats_total")) / el.Seconds()
		r.NodeCPUPercent = append(r.NodeCPUPercent, pct(cpu1[i]-cpu0[i]))
	}
	before := m0[li].byLabel("loom_raft_entries_applied_total", "kind")
	for k, v := range m1[li].byLabel("loom_raft_entries_applied_total", "kind") {
		if d := v - before[k]; d > 0 {
			r.EntriesByKind[k] = uint64(d)
		}
	}
	r.Elections = r.EntriesByKind["leader_elected"]
	r.LeaderChanged = r.Elections > 0 || after == nil || after.id != leader.id
	r.HeartbeatP50Ms, r.HeartbeatP99Ms = quantileMs(lats, 0.50), quantileMs(lats, 0.99)
	return r, nil
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

// simWorker is one simulated worker: it registers, heartbeats at the
// coordinator's interval, and reports a step of its generation every step.
type simWorker struct {
	id, job     string
	c           api.CoordinatorClient
	incarnation int64
	every       time.Duration
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
	var gen, n int64
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
			if err == nil {
				gen = r.GetGeneration()
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
		case <-step.C:
			if gen == 0 {
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
