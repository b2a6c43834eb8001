//go:build integ

package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/netlab"
	"github.com/loomtrain/loom/internal/pki"
	"github.com/loomtrain/loom/train"
)

// Multi-host tests: six hosts on one machine (internal/netlab: a network
// namespace each, one bridge), three coordinators and three workers, each
// on its own host, with a join token and sample ledgers. They need root:
// run them as root with
//
//	go test -tags integ -run TestMultiHost ./cmd/loom
//
// and they fail with netlab's error otherwise.

// Job and cluster shape. Each worker's device is slowed down (idle sleep,
// not spin, see device.Throttled) so that on 2 cores the job lasts about
// 20 s: long enough to inject a fault at mhFaultStep, freeze a worker for
// longer than its lease and see it come back, while a healthy case stays
// well under a minute.
const (
	mhJobYAML = `name: multihost
seed: 11
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 1, global_batch: 240}
optimizer: {kind: adamw, lr: 0.002}
checkpoint: {dir: %s, every_steps: 50}
`
	mhSamples   = 60000
	mhBatch     = 240
	mhSeed      = 11
	mhSteps     = 230
	mhDevice    = "cpu:threads=1,slowdown=16"
	mhFaultStep = 40
	mhToken     = "multihost-join-token"
	// mhGRPCPort and mhRaftPort are every coordinator's ports: each has
	// a host, so they never collide.
	mhGRPCPort, mhRaftPort = 7070, 7071
)

// hostCluster is a loom cluster across netlab hosts: coordinators c0..c2
// and workers w0..w2, each alone on the host of its name.
type hostCluster struct {
	t      *testing.T
	lab    *netlab.Lab
	dir    string
	ledger string // the sample ledgers' directory
	exe    string // the test binary, which runs as the loom CLI
	opts   hostClusterOptions
	procs  map[string]*hostProc // by name (c0, w1, ...)
	grpc   []string             // the coordinators' gRPC addresses
	client api.CoordinatorClient
	status api.ClusterClient
	jobID  string
}

// hostClusterOptions change how a hostCluster runs its processes.
type hostClusterOptions struct {
	// extraArgs returns more flags for one loom command line: role is
	// "coordinator" or "worker" (name c0, w1, ..., ip its host's
	// address) or "client" (the loom launch that submits the job, run in
	// the test's own namespace: name "launch", ip the test's address on
	// the lab's bridge). nil: none.
	extraArgs func(role, name, ip string) []string
	// dialOptions are added to the test's own connections to the
	// coordinators (its polls), e.g. TLS credentials.
	dialOptions []grpc.DialOption
}

// hostProc is one loom process on a host; its output goes to log.
type hostProc struct {
	name string
	host *netlab.Host
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once it exited; err is then set
	err  error
}

// startHostCluster builds the hosts, starts the coordinators (c0
// bootstraps, c1 and c2 join it), submits the job and starts the workers.
// Everything it creates is removed by t.Cleanup, even when t fails: the
// lab's Close kills every process on its hosts and deletes them.
func startHostCluster(t *testing.T, opts hostClusterOptions) *hostCluster {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &hostCluster{t: t, dir: t.TempDir(), exe: exe, opts: opts, procs: map[string]*hostProc{}}
	c.ledger = filepath.Join(c.dir, "ledger")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if c.lab, err = netlab.New(ctx, "c0", "c1", "c2", "w0", "w1", "w2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.lab.Close(); err != nil {
			t.Errorf("netlab: %v", err)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
	})
	token := filepath.Join(c.dir, "join-token")
	if err := os.WriteFile(token, []byte(mhToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.grpc = append(c.grpc, fmt.Sprintf("%s:%d", c.lab.Host(fmt.Sprintf("c%d", i)).IP, mhGRPCPort))
	}
	conn := c.dial(c.grpc...)
	c.client, c.status = api.NewCoordinatorClient(conn), api.NewClusterClient(conn)
	for i := range 3 {
		name := fmt.Sprintf("c%d", i)
		h := c.lab.Host(name)
		args := []string{"coordinator", "--id", name, "--data-dir", filepath.Join(c.dir, name),
			"--grpc-addr", c.grpc[i], "--raft-addr", fmt.Sprintf("%s:%d", h.IP, mhRaftPort),
			"--join-token-file", token, "--log-level", "info"}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", c.grpc[0])
		}
		c.start(name, "coordinator", args...)
		c.waitMembers(i + 1)
	}
	job := writeJob(t, fmt.Sprintf(mhJobYAML, filepath.Join(c.dir, "ckpt")))
	c.jobID = c.submit(job)
	for i := range 3 {
		name := fmt.Sprintf("w%d", i)
		// --shm-ring 0: the hosts share this machine's /dev/shm, and a
		// ring through it would carry the gradients past a cut link.
		c.start(name, "worker", "worker", "--coordinator", strings.Join(c.grpc, ","), "--job", c.jobID, "--id", name,
			"--device", mhDevice, "--listen", c.lab.Host(name).IP+":0", "--shm-ring", "0",
			"--join-token-file", token, "--sample-ledger", filepath.Join(c.ledger, name+".jsonl"))
	}
	return c
}

// dial connects the test to the coordinators at addrs, until t ends.
func (c *hostCluster) dial(addrs ...string) *grpc.ClientConn {
	c.t.Helper()
	conn, err := api.Dial(addrs, c.opts.dialOptions...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

// start runs the loom CLI with args (and the extraArgs for role) on the
// host called name.
func (c *hostCluster) start(name, role string, args ...string) *hostProc {
	c.t.Helper()
	h := c.lab.Host(name)
	if c.opts.extraArgs != nil {
		args = append(args, c.opts.extraArgs(role, name, h.IP)...)
	}
	p := &hostProc{name: name, host: h, log: filepath.Join(c.dir, name+".log"), done: make(chan struct{})}
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	p.cmd = h.Command(context.Background(), c.exe, args...)
	p.cmd.Env = append(os.Environ(), "LOOM_TEST_AS_CLI=1")
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		c.t.Fatalf("start %s on %s: %v", name, h.NS, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	c.procs[name] = p
	return p
}

// submit submits the job with loom launch --detach from the test's own
// namespace and returns its id.
func (c *hostCluster) submit(job string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), time.Minute)
	defer cancel()
	args := []string{"launch", job, "--coordinator", strings.Join(c.grpc, ","), "--detach", "--max-steps", fmt.Sprint(mhSteps)}
	if c.opts.extraArgs != nil {
		args = append(args, c.opts.extraArgs("client", "launch", c.lab.ControllerIP())...)
	}
	cmd := exec.CommandContext(ctx, c.exe, args...)
	cmd.Env = append(os.Environ(), "LOOM_TEST_AS_CLI=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("loom launch --detach: %v\n%s", err, stderr.String())
	}
	if id := strings.TrimSpace(string(out)); strings.HasPrefix(id, "job-") {
		return id
	}
	c.t.Fatalf("no job id in loom launch's output %q\n%s", out, stderr.String())
	return ""
}

// waitMembers waits until the cluster has a leader and n members.
func (c *hostCluster) waitMembers(n int) {
	c.t.Helper()
	var last string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(c.t.Context(), 2*time.Second)
		st, err := c.status.ClusterStatus(ctx, &api.ClusterStatusRequest{})
		cancel()
		if err == nil && st.GetLeaderId() != "" && len(st.GetMembers()) >= n {
			return
		}
		last = fmt.Sprint(st, err)
	}
	c.t.Fatalf("no leader with %d coordinators within 30 s (last: %s)", n, last)
}

// leader returns the name (and so the host) of the Raft leader, as the
// first coordinator to answer within 20 s knows it (a call that lands on
// a cut-off one times out and is tried again).
func (c *hostCluster) leader() string {
	c.t.Helper()
	var err error
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(c.t.Context(), 2*time.Second)
		var st *api.ClusterStatusResponse
		st, err = c.status.ClusterStatus(ctx, &api.ClusterStatusRequest{})
		cancel()
		if err == nil && c.lab.Host(st.GetLeaderId()) != nil {
			return st.GetLeaderId()
		}
	}
	c.t.Fatalf("no coordinator named a leader within 20 s (last error: %v)", err)
	return ""
}

// job returns the job as some coordinator has it, or nil for now (a call
// may land on a cut-off coordinator and time out).
func (c *hostCluster) job() *api.Job {
	ctx, cancel := context.WithTimeout(c.t.Context(), 2*time.Second)
	defer cancel()
	r, err := c.client.GetJob(ctx, &api.GetJobRequest{JobId: c.jobID})
	if err != nil {
		return nil
	}
	return r.GetJob()
}

// waitStep waits until the job reports step.
func (c *hostCluster) waitStep(step int64, within time.Duration) {
	c.t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if j := c.job(); j.GetStep() >= step {
			return
		}
	}
	c.t.Fatalf("the job did not reach step %d within %v (now: %v)", step, within, c.job())
}

// waitCompleted waits until the job is COMPLETED at its last step. It
// gives up early once every worker has exited and 5 s more changed
// nothing: no one is left to complete the job.
func (c *hostCluster) waitCompleted(within time.Duration) {
	c.t.Helper()
	var last *api.Job
	var allGone time.Time
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if j := c.job(); j != nil {
			last = j
			if j.GetState() != api.JobState_JOB_STATE_RUNNING && j.GetState() != api.JobState_JOB_STATE_PENDING {
				break
			}
		}
		if allGone.IsZero() && c.workersExited() {
			allGone = time.Now()
		}
		if !allGone.IsZero() && time.Since(allGone) > 5*time.Second {
			c.t.Errorf("every worker has exited and the job is not complete")
			break
		}
	}
	if last.GetState() != api.JobState_JOB_STATE_COMPLETED || last.GetStep() != mhSteps {
		c.t.Fatalf("the job is %v at step %d (generation %d, reason %q); want COMPLETED at step %d",
			last.GetState(), last.GetStep(), last.GetGeneration(), last.GetReason(), mhSteps)
	}
}

// workersExited reports whether every worker process has exited.
func (c *hostCluster) workersExited() bool {
	for _, name := range []string{"w0", "w1", "w2"} {
		select {
		case <-c.procs[name].done:
		default:
			return false
		}
	}
	return true
}

// waitExits waits until every worker exited, and fails for one that did
// not, or exited with an error.
func (c *hostCluster) waitExits(within time.Duration) {
	c.t.Helper()
	end := time.After(within)
	for _, name := range []string{"w0", "w1", "w2"} {
		p := c.procs[name]
		select {
		case <-p.done:
			if p.err != nil {
				c.t.Errorf("worker %s exited with %v", name, p.err)
			}
		case <-end:
			c.t.Errorf("worker %s still runs %v after the job completed", name, within)
			return
		}
	}
}

// checkLost fails the test for every worker the coordinators removed
// after t (a worker_lost event) that is not in expected, and logs the
// others.
func (c *hostCluster) checkLost(t time.Time, expected ...string) {
	c.t.Helper()
	var r *api.ListEventsResponse
	var err error
	// A call may land on a coordinator whose link was just restored: its
	// connection waits for TCP's next retransmission. Others answer.
	for range 10 {
		ctx, cancel := context.WithTimeout(c.t.Context(), 3*time.Second)
		r, err = c.client.ListEvents(ctx, &api.ListEventsRequest{JobId: c.jobID})
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		c.t.Fatalf("events: %v", err)
	}
	for _, e := range r.GetEvents() {
		if e.GetKind() != "worker_lost" || e.GetUnixNano() < t.UnixNano() {
			continue
		}
		after := time.Duration(e.GetUnixNano() - t.UnixNano()).Round(time.Millisecond)
		if slices.Contains(expected, e.GetWorkerId()) {
			c.t.Logf("%s lost %v after the fault: %s", e.GetWorkerId(), after, e.GetMessage())
		} else {
			c.t.Errorf("%s, unharmed, was lost %v after the fault: %s", e.GetWorkerId(), after, e.GetMessage())
		}
	}
}

// checkLedgers checks that the workers' sample ledgers used every sample
// of the job's steps exactly once, and returns the reconciled entries.
func (c *hostCluster) checkLedgers() []train.LedgerEntry {
	c.t.Helper()
	es := readLedgers(c.t, c.ledger)
	if err := train.CheckExactlyOnce(es, mhSamples, mhSteps, mhBatch, mhSeed); err != nil {
		c.t.Fatalf("sample ledgers: %v; %s", err, trainedTwice(es))
	}
	return es
}

// trainedTwice names the steps that the ledgers show completed in more
// than one generation, as runs of steps with the same generations.
func trainedTwice(es []train.LedgerEntry) string {
	gens := map[int]map[int64]bool{}
	for _, e := range es {
		if gens[e.Step] == nil {
			gens[e.Step] = map[int64]bool{}
		}
		gens[e.Step][e.Gen] = true
	}
	var out []string
	n := 0
	for step := 1; step <= mhSteps; {
		if len(gens[step]) < 2 {
			step++
			continue
		}
		g := slices.Sorted(maps.Keys(gens[step]))
		end := step
		for end < mhSteps && slices.Equal(slices.Sorted(maps.Keys(gens[end+1])), g) {
			end++
		}
		out = append(out, fmt.Sprintf("steps %d-%d in generations %v", step, end, g))
		n += end - step + 1
		step = end + 1
	}
	if n == 0 {
		return "no step completed in two generations"
	}
	return fmt.Sprintf("%d steps completed in more than one generation: %s", n, strings.Join(out, ", "))
}

// pauseAfter is, from the ledgers, the longest time between two
// consecutive completed steps within 30 s after t (counting from the last
// completion before t): how long the job did not train after a fault at t.
func pauseAfter(es []train.LedgerEntry, t time.Time) time.Duration {
	first := map[int]int64{} // step -> its earliest completion
	for _, e := range es {
		if at, ok := first[e.Step]; !ok || e.UnixNano < at {
			first[e.Step] = e.UnixNano
		}
	}
	prev, times := int64(0), []int64{}
	for _, at := range first {
		switch {
		case at < t.UnixNano():
			prev = max(prev, at)
		case at <= t.Add(30*time.Second).UnixNano():
			times = append(times, at)
		}
	}
	slices.Sort(times)
	if prev == 0 {
		prev = t.UnixNano()
	}
	var gap time.Duration
	for _, at := range times {
		gap = max(gap, time.Duration(at-prev))
		prev = at
	}
	return gap
}

// dumpLogs logs the end of every process's log.
func (c *hostCluster) dumpLogs() {
	names := make([]string, 0, len(c.procs))
	for n := range c.procs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b, _ := os.ReadFile(c.procs[n].log)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		c.t.Logf("---- %s (on %s, %s), last %d lines ----\n%s", n, c.procs[n].host.NS, c.procs[n].host.IP, len(lines), strings.Join(lines, "\n"))
	}
}

// mtlsCluster runs every link of a hostCluster under mutual TLS, as a
// cluster is deployed: a coordinator certificate shared by the
// coordinators, a worker certificate by the workers, an admin one for the
// submitting CLI and the test's own polls.
func mtlsCluster(t *testing.T) hostClusterOptions {
	ca := pki.NewTestCA(t)
	files := map[string]pki.Files{}
	for _, r := range []pki.Role{pki.RoleCoordinator, pki.RoleWorker, pki.RoleAdmin} {
		files[string(r)] = ca.Issue(t, r, string(r))
	}
	files["client"] = files[string(pki.RoleAdmin)]
	admin, err := pki.Load(files["client"])
	if err != nil {
		t.Fatal(err)
	}
	return hostClusterOptions{
		extraArgs: func(role, _, _ string) []string {
			f := files[role]
			return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
		},
		dialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(admin.Config(pki.RoleCoordinator)))},
	}
}

// Three coordinators and three workers on six hosts, every link mutual
// TLS, one fault per case on a fresh cluster at step mhFaultStep: a worker's link cut, the Raft
// leader's link cut, a worker's host frozen for longer than the lease. In
// each the job completes, no worker but the one harmed is lost, every
// sample is used exactly once, and once the link is back (or the host
// thawed) every worker exits 0.
func TestMultiHost(t *testing.T) {
	t.Run("worker_link_cut", func(t *testing.T) {
		c := startHostCluster(t, mtlsCluster(t))
		c.waitStep(mhFaultStep, 2*time.Minute)
		w := c.lab.Host("w2")
		at := time.Now()
		if err := w.Cut(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Restore() })
		c.waitCompleted(2 * time.Minute)
		if err := w.Restore(); err != nil {
			t.Fatal(err)
		}
		c.checkLost(at, "w2")
		es := c.checkLedgers()
		t.Logf("w2's link cut at step ~%d: the job paused %v", mhFaultStep, pauseAfter(es, at).Round(time.Millisecond))
		c.waitExits(time.Minute)
	})
	t.Run("leader_link_cut", func(t *testing.T) {
		c := startHostCluster(t, mtlsCluster(t))
		c.waitStep(mhFaultStep, 2*time.Minute)
		name := c.leader()
		h := c.lab.Host(name)
		at := time.Now()
		if err := h.Cut(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Restore() })
		c.waitCompleted(2 * time.Minute)
		done := time.Since(at)
		newLeader := c.leader()
		if err := h.Restore(); err != nil {
			t.Fatal(err)
		}
		if newLeader == name {
			t.Errorf("%s, cut off, is still the leader", name)
		}
		c.checkLost(at)
		es := c.checkLedgers()
		t.Logf("leader %s's link cut at step ~%d: %s leads; the job paused %v and completed %v after the cut",
			name, mhFaultStep, newLeader, pauseAfter(es, at).Round(time.Millisecond), done.Round(time.Millisecond))
		c.waitExits(time.Minute)
		// The old leader, back on the network, catches up: it shows the
		// job completed from its own replica.
		old := api.NewCoordinatorClient(c.dial(c.grpc[slices.Index([]string{"c0", "c1", "c2"}, name)]))
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			r, err := old.GetJob(ctx, &api.GetJobRequest{JobId: c.jobID})
			cancel()
			if err == nil && r.GetJob().GetState() == api.JobState_JOB_STATE_COMPLETED {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%s, restored, does not show the job completed within 30 s: %v %v", name, r.GetJob().GetState(), err)
			}
		}
	})
	t.Run("worker_host_frozen", func(t *testing.T) {
		c := startHostCluster(t, mtlsCluster(t))
		c.waitStep(mhFaultStep, 2*time.Minute)
		w := c.lab.Host("w2")
		at := time.Now()
		if err := w.Freeze(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Thaw() })
		time.Sleep(12 * time.Second) // the lease is 10 s
		if err := w.Thaw(); err != nil {
			t.Fatal(err)
		}
		thawed := time.Now()
		c.waitCompleted(2 * time.Minute)
		c.checkLost(at, "w2")
		es := c.checkLedgers()
		var back time.Duration = -1
		for _, e := range readLedgers(t, filepath.Join(c.ledger, "w2")) {
			if d := time.Duration(e.UnixNano - thawed.UnixNano()); d > 0 && (back < 0 || d < back) {
				back = d
			}
		}
		t.Logf("w2's host frozen at step ~%d for 12 s: the job paused %v; w2 trained again %v after the thaw (-1: not before the end)",
			mhFaultStep, pauseAfter(es, at).Round(time.Millisecond), back.Round(time.Millisecond))
		c.waitExits(time.Minute)
	})
}
