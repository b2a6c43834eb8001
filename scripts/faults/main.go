// Command faults puts a real loom cluster (3 coordinators, 3 workers, default
// settings) through a fault matrix and prints, per case, the time from the
// fault until the job steps at its normal pace again (the longest pause
// between two completed steps within 30 s, and when it ended), the steps
// redone, whether every sample was used exactly once, the final accuracy
// beside the fault-free run, and whether every checkpoint on disk was
// recorded and the job has its final checkpoint.
// It is a benchmark, not a test: run it with scripts/faults.sh.
//
// Cases: none (the fault-free run), worker SIGKILL, worker SIGSTOP, a
// worker's link cut, a worker killed while two others join, a full disk
// under the checkpoints (a 2 MiB tmpfs; needs root), the Raft leader
// SIGKILLed, the Raft leader's link cut, and all three coordinators
// SIGKILLed for 5 s and restarted. The two link cuts run every process on
// its own host (internal/netlab: a network namespace each on one bridge;
// needs root and ip(8)) and set the victim's switch port down.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/netlab"
	"github.com/loomtrain/loom/train"
)

const (
	jobYAML = `name: faults
seed: 5
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 1, global_batch: 256}
optimizer: {kind: adamw, lr: 0.002}
checkpoint: {dir: %s, every_steps: 40}
`
	samples = 60000
	batch   = 256
	seed    = 5
	steps   = samples / batch // one epoch, the last partial batch dropped
	faultAt = 80              // the step at which each fault is injected
)

var (
	bin    = flag.String("loom", "bin/loom", "the loom binary")
	device = flag.String("device", "cpu:threads=1", "each worker's --device")
	only   = flag.String("cases", "", "comma-separated case names to run (default all)")
	keep   = flag.Bool("keep", false, "keep each case's directory (logs, ledgers, checkpoints)")
)

type result struct {
	name      string
	recovery  time.Duration // fault to the end of the longest pause after it; <0: no step after it
	gap       time.Duration // that pause: the longest time between two completed steps
	redone    int           // steps attempted and abandoned, then trained again
	exactly   error
	accuracy  float64
	note      string
	completed bool
	// Checkpoints: on disk but not recorded; write failures the job
	// counts; whether the job has its final checkpoint recorded.
	unrecorded int
	ckFailures int64
	finalCk    bool
}

type fault struct {
	name string
	// inject runs at step faultAt and returns when the fault is in place;
	// its note is printed beside the figures.
	inject func(c *cluster) (note string, err error)
	// netns runs every coordinator and worker on its own netlab host
	// (hostNames), so that one's link can be cut.
	netns bool
	// fullDisk puts the checkpoint directory on a 2 MiB tmpfs: every
	// checkpoint write fails for want of space.
	fullDisk bool
}

// faultCases is the matrix, in the order it runs.
func faultCases() []fault {
	return []fault{
		{name: "none", inject: func(*cluster) (string, error) { return "", nil }},
		{name: "worker SIGKILL", inject: func(c *cluster) (string, error) {
			return "", c.workers[2].signal(syscall.SIGKILL)
		}},
		{name: "worker SIGSTOP", inject: func(c *cluster) (string, error) {
			if err := c.workers[2].signal(syscall.SIGSTOP); err != nil {
				return "", err
			}
			go func() { time.Sleep(10 * time.Second); _ = c.workers[2].signal(syscall.SIGCONT) }()
			return "SIGCONT 10 s later", nil
		}},
		{name: "link cut", netns: true, inject: func(c *cluster) (string, error) {
			return "", c.lab.Host(c.workers[2].id).Cut()
		}},
		{name: "kill during 2 joins", inject: func(c *cluster) (string, error) {
			c.startWorker("j0")
			c.startWorker("j1")
			return "", c.workers[2].signal(syscall.SIGKILL)
		}},
		{name: "full disk", fullDisk: true, inject: func(*cluster) (string, error) { return "", nil }},
		{name: "leader SIGKILL", inject: func(c *cluster) (string, error) {
			i, err := c.leader()
			if err != nil {
				return "", err
			}
			return "killed " + c.coords[i].id, c.coords[i].signal(syscall.SIGKILL)
		}},
		{name: "leader link cut", netns: true, inject: func(c *cluster) (string, error) {
			i, err := c.leader()
			if err != nil {
				return "", err
			}
			return "cut " + c.coords[i].id, c.lab.Host(c.coords[i].id).Cut()
		}},
		{name: "all coordinators SIGKILL", inject: func(c *cluster) (string, error) {
			for _, p := range c.coords {
				_ = p.signal(syscall.SIGKILL)
			}
			time.Sleep(5 * time.Second)
			during := c.completedSince(time.Now().Add(-5 * time.Second))
			for i := range c.coords {
				c.startCoordinator(i, false)
			}
			return fmt.Sprintf("restarted after 5 s; %d steps trained meanwhile", during), nil
		}},
	}
}

func main() {
	flag.Parse()
	cases := faultCases()
	var want []string
	if *only != "" {
		want = strings.Split(*only, ",")
	}
	var results []result
	for _, f := range cases {
		if want != nil && !slices.Contains(want, f.name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", f.name)
		r := runCase(f)
		fmt.Fprintf(os.Stderr, "   %s\n", describe(r))
		results = append(results, r)
	}
	base := 0.0
	for _, r := range results {
		if r.name == "none" {
			base = r.accuracy
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tLONGEST PAUSE\tSTEPPING AGAIN AFTER\tSTEPS REDONE\tEXACTLY ONCE\tACCURACY\tVS NONE\tNOTE")
	for _, r := range results {
		rec, gap := "no step", "-"
		if r.recovery >= 0 {
			rec, gap = r.recovery.Round(10*time.Millisecond).String(), r.gap.Round(10*time.Millisecond).String()
		}
		once := "yes"
		if r.exactly != nil {
			once = "NO: " + r.exactly.Error()
		}
		vs := "-"
		if base > 0 && r.name != "none" {
			vs = fmt.Sprintf("%+.2f pt", 100*(r.accuracy-base))
		}
		acc := fmt.Sprintf("%.2f%%", 100*r.accuracy)
		if !r.completed {
			acc = "NOT COMPLETED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.name, gap, rec, r.redone, once, acc, vs, r.note)
	}
	_ = tw.Flush()
}

func describe(r result) string {
	b, _ := json.Marshal(map[string]any{"recovered_s": r.recovery.Seconds(), "pause_s": r.gap.Seconds(), "redone": r.redone,
		"exactly_once": r.exactly == nil, "accuracy": r.accuracy, "completed": r.completed, "note": r.note})
	return string(b)
}

// proc is one loom process with its log file.
type proc struct {
	id  string
	cmd *exec.Cmd
	log *os.File
}

func (p *proc) signal(s syscall.Signal) error {
	if p == nil || p.cmd.Process == nil {
		return errors.New("no process")
	}
	return p.cmd.Process.Signal(s)
}

func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.log.Close()
}

// hostNames are the netlab hosts of a netns case: one per coordinator and
// per worker, named as the process on it.
var hostNames = []string{"c0", "c1", "c2", "w0", "w1", "w2"}

type cluster struct {
	dir     string
	host    string // the address every process binds, without a lab
	coords  []*proc
	grpc    []string
	raft    []string
	workers []*proc
	jobID   string
	client  api.CoordinatorClient
	conn    interface{ Close() error }
	lab     *netlab.Lab // a netns case's hosts
	mounted string      // a tmpfs to unmount
}

func runCase(f fault) (res result) {
	res = result{name: f.name, recovery: -1}
	dir, err := os.MkdirTemp("", "loom-faults-")
	if err != nil {
		res.note = err.Error()
		return res
	}
	c := &cluster{dir: dir, host: "127.0.0.1"}
	defer c.close(*keep)
	if f.fullDisk {
		if err := c.mountFull(); err != nil {
			res.note = "skipped: " + err.Error()
			return res
		}
	}
	if f.netns {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c.lab, err = netlab.New(ctx, hostNames...)
		cancel()
		if err != nil {
			res.note = "skipped: " + err.Error()
			return res
		}
	}
	if err := c.start(); err != nil {
		res.note = "setup: " + err.Error()
		return res
	}
	if err := c.waitStep(faultAt, 3*time.Minute); err != nil {
		res.note = err.Error()
		return res
	}
	at := time.Now()
	note, err := f.inject(c)
	if err != nil {
		res.note = "inject: " + err.Error()
		return res
	}
	res.note = note
	j, err := c.waitDone(4 * time.Minute)
	if err != nil {
		res.note = strings.TrimPrefix(res.note+"; "+err.Error(), "; ")
	}
	res.completed = j.GetState() == api.JobState_JOB_STATE_COMPLETED
	res.accuracy = j.GetTestAccuracy()
	raw, entries := c.ledgers()
	res.exactly = train.CheckExactlyOnce(entries, samples, steps, batch, seed)
	res.redone = redone(raw, entries)
	res.recovery, res.gap = stallAfter(entries, at, 30*time.Second)
	var ck string
	ck, res.unrecorded, res.finalCk = c.checkpoints(j)
	res.ckFailures = j.GetCheckpointFailures()
	res.note = strings.TrimPrefix(res.note+"; "+ck, "; ")
	if res.completed {
		res.note += "; " + finish(entries, j, at)
	}
	return res
}

// finish says how long after the fault at t the job trained its last step
// and how long after that the coordinators marked it completed (rank 0's
// final checkpoint record and report): a fault can delay the end without
// pausing the training.
func finish(es []train.LedgerEntry, j *api.Job, t time.Time) string {
	var last int64
	for _, e := range es {
		last = max(last, e.UnixNano)
	}
	return fmt.Sprintf("last step %v after the fault, completed %v later",
		time.Duration(last-t.UnixNano()).Round(10*time.Millisecond), time.Duration(j.GetCompletedUnixNano()-last).Round(10*time.Millisecond))
}

// checkpoints says whether every checkpoint on disk was recorded, and
// whether the job says its final checkpoint exists.
func (c *cluster) checkpoints(j *api.Job) (note string, unrecorded int, final bool) {
	recorded := map[string]bool{}
	for _, ck := range j.GetCheckpoints() {
		recorded[filepath.Base(ck.GetPath())] = true
	}
	onDisk, _ := filepath.Glob(filepath.Join(c.dir, "ckpt", "faults", "step-*"))
	missing := 0
	for _, d := range onDisk {
		if !recorded[filepath.Base(d)] {
			missing++
		}
	}
	out := fmt.Sprintf("checkpoints: %d on disk, %d of them unrecorded", len(onDisk), missing)
	if n := j.GetCheckpointFailures(); n > 0 {
		out += fmt.Sprintf("; %d writes failed (job shows: %s)", n, j.GetCheckpointError())
	}
	cks := j.GetCheckpoints()
	final = len(cks) > 0 && cks[len(cks)-1].GetStep() == j.GetStep()
	if final {
		out += "; final checkpoint recorded"
	} else {
		out += "; NO final checkpoint"
	}
	return out, missing, final
}

// mountFull mounts a 2 MiB tmpfs as the checkpoint directory.
func (c *cluster) mountFull() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (mount)")
	}
	d := filepath.Join(c.dir, "ckpt")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	if err := run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d); err != nil {
		return err
	}
	c.mounted = d
	return nil
}

func (c *cluster) start() error {
	for i := 0; i < 3; i++ {
		if c.lab != nil { // a host each: the same ports on every one
			ip := c.lab.Host(fmt.Sprintf("c%d", i)).IP
			c.grpc = append(c.grpc, ip+":7070")
			c.raft = append(c.raft, ip+":7071")
		} else {
			c.grpc = append(c.grpc, freeAddr(c.host))
			c.raft = append(c.raft, freeAddr(c.host))
		}
		c.coords = append(c.coords, nil)
	}
	c.startCoordinator(0, true)
	if err := waitMembers(c.grpc[0], 1); err != nil {
		return err
	}
	c.startCoordinator(1, true)
	c.startCoordinator(2, true)
	if err := waitMembers(c.grpc[0], 3); err != nil {
		return err
	}
	conn, err := api.Dial(c.grpc)
	if err != nil {
		return err
	}
	c.conn, c.client = conn, api.NewCoordinatorClient(conn)
	job := filepath.Join(c.dir, "job.yaml")
	if err := os.WriteFile(job, fmt.Appendf(nil, jobYAML, filepath.Join(c.dir, "ckpt")), 0o644); err != nil {
		return err
	}
	out, err := exec.Command(*bin, "launch", job, "--coordinator", strings.Join(c.grpc, ","), "--detach").Output()
	if err != nil {
		return fmt.Errorf("submit: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "job-") {
			c.jobID = f
		}
	}
	if c.jobID == "" {
		return fmt.Errorf("no job id in %q", out)
	}
	for i := 0; i < 3; i++ {
		c.startWorker(fmt.Sprintf("w%d", i))
	}
	return nil
}

// startCoordinator starts coordinator i: fresh (bootstrap for 0, join for
// the others) or restarted from its data directory.
func (c *cluster) startCoordinator(i int, fresh bool) {
	id := fmt.Sprintf("c%d", i)
	args := []string{"coordinator", "--id", id, "--data-dir", filepath.Join(c.dir, id),
		"--grpc-addr", c.grpc[i], "--raft-addr", c.raft[i]}
	if fresh && i == 0 {
		args = append(args, "--bootstrap")
	} else if fresh {
		args = append(args, "--join", c.grpc[0])
	}
	c.coords[i] = c.spawn(id, args...)
}

// startWorker starts worker id: on its own host in a netns case, where
// --shm-ring 0 keeps its ring off the /dev/shm that the hosts share (the
// gradients would pass a cut link).
func (c *cluster) startWorker(id string) {
	listen, more := c.host+":0", []string(nil)
	if c.lab != nil {
		listen, more = c.lab.Host(id).IP+":0", []string{"--shm-ring", "0"}
	}
	args := append([]string{"worker", "--coordinator", strings.Join(c.grpc, ","), "--job", c.jobID,
		"--id", id, "--device", *device, "--listen", listen, "--sample-ledger", filepath.Join(c.dir, "ledger", id+".jsonl")}, more...)
	c.workers = append(c.workers, c.spawn(id, args...))
}

// spawn starts loom with args, on the host called id in a netns case.
func (c *cluster) spawn(id string, args ...string) *proc {
	lf, _ := os.Create(filepath.Join(c.dir, id+"."+fmt.Sprint(time.Now().UnixNano())+".log"))
	var cmd *exec.Cmd
	if c.lab != nil {
		cmd = c.lab.Host(id).Command(context.Background(), *bin, args...)
	} else {
		cmd = exec.Command(*bin, args...)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	p := &proc{id: id, cmd: cmd, log: lf}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(lf, "start: %v\n", err)
	}
	return p
}

func (c *cluster) close(keep bool) {
	for _, p := range c.workers {
		p.stop()
	}
	for _, p := range c.coords {
		p.stop()
	}
	if c.conn != nil {
		c.conn.Close()
	}
	if c.mounted != "" {
		_ = run("umount", c.mounted)
	}
	if c.lab != nil {
		if err := c.lab.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "   %v\n", err)
		}
	}
	if keep {
		fmt.Fprintf(os.Stderr, "   kept %s\n", c.dir)
		return
	}
	os.RemoveAll(c.dir)
}

func (c *cluster) job() (*api.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := c.client.GetJob(ctx, &api.GetJobRequest{JobId: c.jobID})
	return r.GetJob(), err
}

func (c *cluster) waitStep(step int64, within time.Duration) error {
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if j, err := c.job(); err == nil && j.GetStep() >= step {
			return nil
		}
	}
	return fmt.Errorf("job did not reach step %d within %v", step, within)
}

func (c *cluster) waitDone(within time.Duration) (*api.Job, error) {
	var last *api.Job
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		j, err := c.job()
		if err != nil {
			continue
		}
		last = j
		if s := j.GetState(); s == api.JobState_JOB_STATE_COMPLETED || s == api.JobState_JOB_STATE_CANCELLED {
			return j, nil
		}
	}
	return last, fmt.Errorf("job not done within %v (step %d)", within, last.GetStep())
}

func (c *cluster) leader() (int, error) {
	conn, err := api.Dial(c.grpc)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := api.NewClusterClient(conn).ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil {
		return 0, err
	}
	for i := range c.coords {
		if fmt.Sprintf("c%d", i) == st.GetLeaderId() {
			return i, nil
		}
	}
	return 0, fmt.Errorf("leader %q unknown", st.GetLeaderId())
}

// completedSince counts the steps completed since t, from the ledgers
// written so far.
func (c *cluster) completedSince(t time.Time) int {
	_, es := c.ledgers()
	seen := map[int]bool{}
	for _, e := range es {
		if e.UnixNano >= t.UnixNano() {
			seen[e.Step] = true
		}
	}
	return len(seen)
}

// ledgers returns every worker's raw entries and the reconciled ones.
func (c *cluster) ledgers() ([][]train.LedgerEntry, []train.LedgerEntry) {
	files, _ := filepath.Glob(filepath.Join(c.dir, "ledger", "*.jsonl"))
	var all [][]train.LedgerEntry
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		var es []train.LedgerEntry
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var e train.LedgerEntry
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				es = append(es, e)
			}
		}
		fh.Close()
		all = append(all, es)
	}
	return all, train.ReconcileLedgers(all)
}

// redone counts the steps some rank started in a generation where no rank
// completed them (abandoned, then trained again in a later generation).
func redone(raw [][]train.LedgerEntry, used []train.LedgerEntry) int {
	type key struct {
		step int
		gen  int64
	}
	usedAt := map[key]bool{}
	for _, e := range used {
		usedAt[key{e.Step, e.Gen}] = true
	}
	steps := map[int]bool{}
	for _, es := range raw {
		for _, e := range es {
			if !usedAt[key{e.Step, e.Gen}] {
				steps[e.Step] = true
			}
		}
	}
	return len(steps)
}

// stallAfter measures the job's pause after a fault at t from the steps
// completion times (the earliest rank's): the longest gap between
// consecutive completed steps within window after t, counting from the last
// completion before t, and how long after t that gap ended (the job was
// stepping at its normal pace again). -1 if no step completed after t.
func stallAfter(es []train.LedgerEntry, t time.Time, window time.Duration) (recovered, gap time.Duration) {
	done := map[int]int64{}
	for _, e := range es {
		if at, ok := done[e.Step]; !ok || e.UnixNano < at {
			done[e.Step] = e.UnixNano
		}
	}
	var times []int64
	prev := int64(0)
	for _, at := range done {
		switch {
		case at < t.UnixNano():
			prev = max(prev, at)
		case at <= t.Add(window).UnixNano():
			times = append(times, at)
		}
	}
	if len(times) == 0 {
		return -1, -1
	}
	slices.Sort(times)
	if prev == 0 {
		prev = t.UnixNano()
	}
	end := times[0]
	gap = time.Duration(times[0] - prev)
	for i := 1; i < len(times); i++ {
		if d := time.Duration(times[i] - times[i-1]); d > gap {
			gap, end = d, times[i]
		}
	}
	return time.Duration(end - t.UnixNano()), gap
}

func waitMembers(addr string, n int) error {
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		conn, err := api.Dial([]string{addr})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := api.NewClusterClient(conn).ClusterStatus(ctx, &api.ClusterStatusRequest{})
			cancel()
			conn.Close()
			if err == nil && st.GetLeaderId() != "" && len(st.GetMembers()) >= n {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("coordinator %s: no leader with %d members within 30 s", addr, n)
}

func freeAddr(host string) string {
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
