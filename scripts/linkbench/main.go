// Command linkbench measures training over constrained links (issue 19's
// figure "a GPT whose gradients are large for the link: the best PP×DP plan
// >= 1.5x the tokens/s of pure data parallelism on the same 4 workers; the
// planner picks it by itself with pipeline_stages: auto").
//
// It builds the shaped-link harness of internal/netlab, the one the
// multi-host tests use: one network namespace per worker on one bridge,
// each worker's link rate-limited each way with tc tbf (-rate), and
// latency added in user space: every worker's ring address is a delaying
// relay (netlab.Relay, in this process, on the bridge) that holds what it
// forwards for -rtt/2 each way, so a message between two workers crosses
// the sender's link, the relay and the receiver's link, and gains -rtt per
// round trip. The coordinator runs in this process's namespace.
//
// For each mode it starts a fresh coordinator and -workers workers, submits
// the job (loom launch JOB --coordinator ... --detach) with
// --pipeline-stages MODE (dp = 1: pure data parallelism; auto: the
// planner picks from the links it measures; or a stage count), polls the
// job's step and plan every 200 ms until it completes, and prints per mode
// the plans it went through and two rates: steady, the tokens/s over the
// steps of the final plan (from its third step on: the handover and the
// first steps' warm-up left out), and run, the job's own figure over every
// step (the data-parallel steps before an auto re-plan, and the handover,
// included). The worker's measured link (loom workers' LINK column) is
// printed too.
//
// It needs root (namespaces, tc). Usage:
//
//	go build -o bin/loom ./cmd/loom
//	sudo go run ./scripts/linkbench -loom bin/loom [-modes dp,auto] [-rate 200000000] [-rtt 5ms] [-rounds 1]
//
// make bench-link runs it with the defaults.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/netlab"
)

var (
	bin     = flag.String("loom", "bin/loom", "loom binary")
	jobFile = flag.String("job", "examples/gpt-link.yaml", "job config")
	modes   = flag.String("modes", "dp,auto", "comma-separated --pipeline-stages values to compare: dp (= 1), auto, or a stage count")
	workers = flag.Int("workers", 4, "workers, one per namespace")
	device  = flag.String("device", "cpu:threads=1", "every worker's --device")
	rate    = flag.Int64("rate", 200_000_000, "each worker's link rate, bit/s each way (0: unshaped)")
	rtt     = flag.Duration("rtt", 5*time.Millisecond, "round trip added between workers by the relays")
	steps   = flag.Int("steps", 0, "--max-steps (0: the job's)")
	rounds  = flag.Int("rounds", 1, "runs of every mode, alternating their order; the table gives medians")
	keep    = flag.Bool("keep", false, "keep the run directory (logs) and print it")
)

type result struct {
	mode        string
	steady, run float64 // tokens/s
	plans       []string
	links       []float64 // bytes/s per worker as loom measured it
	steadySteps int
	wall        time.Duration
}

func main() {
	flag.Parse()
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "linkbench:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	ms := strings.Split(*modes, ",")
	for _, m := range ms {
		if n, err := strconv.Atoi(m); m != "dp" && m != "auto" && (err != nil || n < 1) {
			return fmt.Errorf("-modes: %q is not dp, auto or a stage count", m)
		}
	}
	switch {
	case *workers < 1:
		return fmt.Errorf("-workers %d: want at least 1", *workers)
	case *rate != 0 && *rate < 8000:
		return fmt.Errorf("-rate %d bit/s: want 0 (unshaped) or at least 8000", *rate)
	case *rtt < 0:
		return fmt.Errorf("-rtt %v: want >= 0", *rtt)
	case *rounds < 1 || *steps < 0:
		return fmt.Errorf("-rounds %d, -steps %d: want rounds >= 1 and steps >= 0", *rounds, *steps)
	}
	if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("-loom: %w (build it: go build -o bin/loom ./cmd/loom)", err)
	}
	dir, err := os.MkdirTemp("", "linkbench-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Println("run directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	fmt.Printf("cpu: %s, %d cores; %d workers of %s; links %s each way, +%v round trip (user-space relay)\n",
		cpuName(), runtime.NumCPU(), *workers, *device, mbit(float64(*rate)/8), *rtt)
	var all []result
	for round := range *rounds {
		order := append([]string(nil), ms...)
		if round%2 == 1 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, m := range order {
			r, err := runMode(filepath.Join(dir, fmt.Sprintf("r%d-%s", round, m)), m)
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			fmt.Printf("round %d %-5s steady %7.0f tok/s over %d steps, run %7.0f tok/s, %5.1fs; plans: %s; links: %s\n",
				round+1, m, r.steady, r.steadySteps, r.run, r.wall.Seconds(), strings.Join(r.plans, " -> "), links(r.links))
			all = append(all, r)
		}
	}
	fmt.Println()
	fmt.Printf("%-6s %14s %14s\n", "mode", "steady tok/s", "run tok/s")
	base := median(all, ms[0], func(r result) float64 { return r.steady })
	for _, m := range ms {
		s, r := median(all, m, func(r result) float64 { return r.steady }), median(all, m, func(r result) float64 { return r.run })
		fmt.Printf("%-6s %14.0f %14.0f   steady %.2fx %s\n", m, s, r, s/base, ms[0])
	}
	return nil
}

func runMode(dir, mode string) (res result, err error) {
	res.mode = mode
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	names := make([]string, *workers)
	for i := range names {
		names[i] = fmt.Sprintf("w%d", i)
	}
	lab, err := netlab.New(ctx, names...)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := lab.Close(); err == nil {
			err = cerr
		}
	}()
	var relays []*netlab.Relay
	defer func() {
		for _, r := range relays {
			_ = r.Close()
		}
	}()
	for _, h := range lab.Hosts() {
		if *rate > 0 {
			if err := h.Shape(*rate); err != nil {
				return res, err
			}
		}
		r, err := lab.Relay(h.IP+":7100", *rtt/2)
		if err != nil {
			return res, err
		}
		relays = append(relays, r)
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			if p.Process != nil {
				_ = p.Process.Kill()
				_ = p.Wait()
			}
		}
	}()
	spawn := func(name string, h *netlab.Host, args ...string) error {
		lf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		defer lf.Close()
		var cmd *exec.Cmd
		if h != nil {
			cmd = h.Command(ctx, *bin, args...)
		} else {
			cmd = exec.CommandContext(ctx, *bin, args...)
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
		return nil
	}
	coord := lab.ControllerIP() + ":7070"
	if err := spawn("coordinator", nil, "coordinator", "--id", "c0", "--bootstrap", "--data-dir", filepath.Join(dir, "c0"),
		"--grpc-addr", coord, "--raft-addr", lab.ControllerIP()+":7071"); err != nil {
		return res, err
	}
	conn, err := api.Dial([]string{coord})
	if err != nil {
		return res, err
	}
	defer conn.Close()
	client := api.NewCoordinatorClient(conn)
	stages := mode
	if mode == "dp" {
		stages = "1"
	}
	args := []string{"launch", *jobFile, "--coordinator", coord, "--detach", "--pipeline-stages", stages}
	if *steps > 0 {
		args = append(args, "--max-steps", fmt.Sprint(*steps))
	}
	var out []byte
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, err = exec.CommandContext(ctx, *bin, args...).CombinedOutput(); err == nil {
			break
		}
		if time.Now().After(end) {
			return res, fmt.Errorf("submit: %v: %s", err, out)
		}
	}
	var jobID string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "job-") {
			jobID = f
		}
	}
	if jobID == "" {
		return res, fmt.Errorf("no job id in %q", out)
	}
	for i, h := range lab.Hosts() {
		if err := spawn(h.Name, h, "worker", "--coordinator", coord, "--job", jobID, "--id", h.Name, "--device", *device,
			"--listen", h.IP+":7100", "--advertise", relays[i].Addr(), "--shm-ring", "0"); err != nil {
			return res, err
		}
	}
	type sample struct {
		at        time.Time
		step, gen int64
		plan      string
	}
	var ss []sample
	var job *api.Job
	link := map[string]float64{} // the newest link rate each worker reported
	start := time.Now()
	for poll := 0; ; poll++ {
		if ctx.Err() != nil {
			return res, fmt.Errorf("job %s did not complete within 20 minutes; logs in %s", jobID, dir)
		}
		c, cancelCall := context.WithTimeout(ctx, 2*time.Second)
		resp, err := client.GetJob(c, &api.GetJobRequest{JobId: jobID})
		cancelCall()
		time.Sleep(200 * time.Millisecond)
		if err != nil {
			continue
		}
		job = resp.GetJob()
		if poll%10 == 0 {
			c, cancelCall := context.WithTimeout(ctx, 2*time.Second)
			if wl, err := client.ListWorkers(c, &api.ListWorkersRequest{}); err == nil {
				for _, w := range wl.GetWorkers() {
					if l := w.GetLinkBytesPerSecond(); l > 0 {
						link[w.GetId()] = l
					}
				}
			}
			cancelCall()
		}
		ss = append(ss, sample{at: time.Now(), step: job.GetStep(), gen: job.GetGeneration(), plan: planName(resp.GetPlan())})
		if s := job.GetState(); s == api.JobState_JOB_STATE_COMPLETED {
			break
		} else if s == api.JobState_JOB_STATE_CANCELLED {
			return res, fmt.Errorf("job %s %v: %s; logs in %s", jobID, s, job.GetReason(), dir)
		}
	}
	res.wall = time.Since(start)
	perSample := float64(contextOf(*jobFile))
	tokens := float64(job.GetSpec().GetGlobalBatch()) * perSample // a step's
	res.run = job.GetSamplesPerSecond() * perSample
	// Steady: the final plan's steps after its second, up to the last
	// sample before completion.
	last := ss[len(ss)-1]
	var from *sample
	for i := range ss {
		s := &ss[i]
		if len(res.plans) == 0 || res.plans[len(res.plans)-1] != s.plan {
			res.plans = append(res.plans, s.plan)
		}
		if s.gen == last.gen && from == nil {
			first := s.step
			for j := i; j < len(ss); j++ {
				if ss[j].step >= first+2 {
					from = &ss[j]
					break
				}
			}
		}
	}
	var to *sample
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].step < last.step || i == 0 {
			to = &ss[i]
			break
		}
	}
	if from != nil && to != nil && to.step > from.step {
		res.steadySteps = int(to.step - from.step)
		res.steady = float64(to.step-from.step) * tokens / to.at.Sub(from.at).Seconds()
	}
	for _, n := range names {
		res.links = append(res.links, link[n])
	}
	return res, nil
}

// contextOf reads model.context from the job file (0 if absent): the
// tokens of one sample.
func contextOf(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "context: %d", &n); err == nil {
			return n
		}
	}
	return 0
}

func planName(p *api.Plan) string {
	if p == nil || len(p.GetRanks()) == 0 {
		return "none"
	}
	var b []string
	for _, l := range p.GetStageLayers() {
		b = append(b, fmt.Sprint(l.GetLast()-l.GetFirst()))
	}
	// stages x replicas [blocks per stage], predicted step time
	return fmt.Sprintf("%dx%d[%s] %.2fs", p.GetPipelineStages(), p.GetReplicas(), strings.Join(b, ","), p.GetPredictedStepSeconds())
}

func median(rs []result, mode string, f func(result) float64) float64 {
	var v []float64
	for _, r := range rs {
		if r.mode == mode {
			v = append(v, f(r))
		}
	}
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func mbit(bytesPerSec float64) string { return fmt.Sprintf("%.0f Mbit/s", bytesPerSec*8/1e6) }

func links(ls []float64) string {
	var s []string
	for _, l := range ls {
		if l > 0 {
			s = append(s, mbit(l))
		} else {
			s = append(s, "-")
		}
	}
	return strings.Join(s, " ")
}

func cpuName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown cpu"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown cpu"
}
