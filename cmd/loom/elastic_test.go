//go:build integ

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/train"
)

var submittedRE = regexp.MustCompile(`submitted\s+\{"job": "([^"]+)", "coordinator": \["([^"]+)"\]`)

// elasticDevice keeps a job long enough to join, drain and kill in its
// middle (with slowdown=3 a fast CPU ran the 230-step job in 5 s, and a
// worker killed at step 100 had barely joined).
const elasticDevice = "cpu:threads=1,slowdown=8"

// elasticRun is a job started by loom launch with two local workers, which
// a test then changes from outside: workers join, die, drain.
type elasticRun struct {
	t        *testing.T
	dir      string
	ledger   string // the sample ledger directory
	steps    int
	launcher *exec.Cmd
	stdout   strings.Builder
	mu       sync.Mutex
	logText  strings.Builder // the launcher's stderr (with its workers' logs)
	jobID    string
	addr     string
	client   api.CoordinatorClient
	job      elasticJob
	plans    []*api.Plan // every generation, in order (guarded by mu)
}

// elasticJob is the job an elasticRun trains and what its end must show.
type elasticJob struct {
	yaml         string // with %s for the checkpoint directory
	batch, n     int    // global batch; training-set size (samples or windows)
	seed         uint64
	minAccuracy  float64 // of the summary (classifiers), or
	maxFinalLoss float64 // of the summary (language models)
}

var mnistElastic = elasticJob{yaml: `name: elastic
seed: 5
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 1, global_batch: 256}
optimizer: {kind: adamw, lr: 0.002}
checkpoint: {dir: %s}
`, batch: 256, n: 60000, seed: 5, minAccuracy: 0.9}

func startElastic(t *testing.T, steps int) *elasticRun {
	t.Helper()
	return startElasticJob(t, steps, mnistElastic)
}

// startElasticJob starts ej for steps steps; extra are more launch flags.
func startElasticJob(t *testing.T, steps int, ej elasticJob, extra ...string) *elasticRun {
	t.Helper()
	r := &elasticRun{t: t, dir: t.TempDir(), steps: steps, job: ej}
	r.ledger = filepath.Join(r.dir, "ledger")
	job := writeJob(t, fmt.Sprintf(ej.yaml, filepath.Join(r.dir, "ckpt")))
	r.launcher = loomCmd(t, append([]string{"launch", job, "--workers", "2", "--device", elasticDevice, "--max-steps", fmt.Sprint(steps),
		"--json", "--sample-ledger", r.ledger}, extra...)...)
	stderr, _ := r.launcher.StderrPipe()
	r.launcher.Stdout = &r.stdout
	if err := r.launcher.Start(); err != nil {
		t.Fatal(err)
	}
	found := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			r.mu.Lock()
			r.logText.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			if m := submittedRE.FindStringSubmatch(sc.Text()); m != nil {
				found <- [2]string{m[1], m[2]}
			}
		}
	}()
	select {
	case m := <-found:
		r.jobID, r.addr = m[0], m[1]
	case <-time.After(time.Minute):
		t.Fatal("launcher did not report the submitted job")
	}
	r.client = api.NewCoordinatorClient(mustDial(t, r.addr))
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := r.client.WatchPlan(ctx, &api.WatchPlanRequest{JobId: r.jobID})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			p, err := stream.Recv()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.plans = append(r.plans, p)
			r.mu.Unlock()
		}
	}()
	return r
}

// assertLostByReport checks that worker id was removed because its peers
// reported the failure and its heartbeats had stopped (not by its lease),
// and, if final, that no plan after the first without it names it again.
func (r *elasticRun) assertLostByReport(id string, final bool) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, err := r.client.ListWorkers(ctx, &api.ListWorkersRequest{})
	if err != nil {
		r.t.Fatal(err)
	}
	var reason string
	for _, w := range ws.GetLost() {
		if w.GetId() == id {
			reason = w.GetLostReason()
		}
	}
	if !strings.Contains(reason, "reported generation") || !strings.Contains(reason, "no heartbeat for") {
		r.t.Fatalf("worker %s: lost reason %q; want a confirmed failure report\n%s", id, reason, r.log())
	}
	r.t.Logf("%s lost: %s", id, reason)
	if !final {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in, gone := false, false
	for _, p := range r.plans {
		has := hasWorker(p, id)
		if in && !has {
			gone = true
		}
		if gone && has {
			r.t.Fatalf("generation %d names %s after a generation without it: a plan kept a confirmed-lost worker", p.GetGeneration(), id)
		}
		in = in || has
	}
	if !gone {
		r.t.Fatalf("no plan left %s out after it was lost (%d plans)", id, len(r.plans))
	}
}

func hasWorker(p *api.Plan, id string) bool {
	for _, rk := range p.GetRanks() {
		if rk.GetWorkerId() == id {
			return true
		}
	}
	return false
}

func (r *elasticRun) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logText.String()
}

// waitStep waits until the job has reported step.
func (r *elasticRun) waitStep(step int64) {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := r.client.GetJob(ctx, &api.GetJobRequest{JobId: r.jobID})
		cancel()
		if err == nil && resp.GetJob().GetStep() >= step {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("job did not reach step %d", step)
}

// join starts worker id for the job, with extra environment variables.
func (r *elasticRun) join(id string, env ...string) *proc {
	r.t.Helper()
	return r.joinAs(id, id, env...)
}

// joinAs starts a worker process with id that writes ledger name.jsonl.
func (r *elasticRun) joinAs(id, name string, env ...string) *proc {
	r.t.Helper()
	return r.start(id, name, elasticDevice, env...)
}

// joinOn starts worker id on device spec.
func (r *elasticRun) joinOn(id, spec string) *proc {
	r.t.Helper()
	return r.start(id, id, spec)
}

func (r *elasticRun) start(id, name, spec string, env ...string) *proc {
	r.t.Helper()
	c := loomCmd(r.t, "worker", "--coordinator", r.addr, "--job", r.jobID, "--id", id, "--device", spec,
		"--log-level", "info", "--sample-ledger", filepath.Join(r.ledger, name+".jsonl"))
	c.Env = append(c.Env, env...)
	p := &proc{cmd: c, stderr: &strings.Builder{}, done: make(chan error, 1)}
	c.Stderr = p.stderr
	if err := c.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { p.done <- c.Wait() }()
	return p
}

// waitTrained waits until each worker's ledger has a completed step: it is
// in the ring, past its join (a tentative line alone can be a step that
// the joiner's first generation abandons).
func (r *elasticRun) waitTrained(ps map[string]*proc) {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for id := range ps {
		for !hasCompletedStep(filepath.Join(r.ledger, id+".jsonl")) {
			if time.Now().After(deadline) {
				r.t.Fatalf("worker %s trained no step\nlauncher:\n%s\n%s:\n%s", id, r.log(), id, ps[id].stderr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// finish waits for the launcher and checks the summary and that every
// sample was used exactly once.
func (r *elasticRun) finish() {
	r.t.Helper()
	if err := r.launcher.Wait(); err != nil {
		r.t.Fatalf("launcher: %v\n%s", err, r.log())
	}
	var s struct {
		Status       string  `json:"status"`
		Steps        int     `json:"steps"`
		TestAccuracy float64 `json:"test_accuracy"`
		FinalLoss    float64 `json:"final_loss"`
	}
	err := json.Unmarshal([]byte(r.stdout.String()), &s)
	if err != nil || s.Status != "completed" || s.Steps != r.steps || s.TestAccuracy < r.job.minAccuracy ||
		(r.job.maxFinalLoss > 0 && !(s.FinalLoss < r.job.maxFinalLoss)) {
		r.t.Fatalf("summary %q (%v)\n%s", r.stdout.String(), err, r.log())
	}
	assertExactlyOnceOf(r.t, readLedgers(r.t, r.ledger), r.job.n, r.steps, r.job.batch, r.job.seed)
}

// firstStepAfter is when the first step after step completed, later than t.
func (r *elasticRun) firstStepAfter(step int, t time.Time) time.Duration {
	var first int64
	for _, e := range readLedgers(r.t, r.ledger) {
		if e.Step > step && e.UnixNano > t.UnixNano() && (first == 0 || e.UnixNano < first) {
			first = e.UnixNano
		}
	}
	if first == 0 {
		return -1
	}
	return time.Duration(first - t.UnixNano())
}

// lastStep is the last step in worker id's ledger.
func (r *elasticRun) lastStep(id string) int {
	last := 0
	for _, e := range readLedgers(r.t, filepath.Join(r.ledger, id)) {
		last = max(last, e.Step)
	}
	return last
}

// waitExit waits for p to exit.
func waitExit(t *testing.T, p *proc, id string, within time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(within):
		t.Fatalf("worker %s did not exit within %v\n%s", id, within, p.stderr)
		return nil
	}
}

// Elastic membership, end to end: 2 workers start the job, 2 more join at
// step 50 (state from a live peer, no restart), one of them is SIGKILLed at
// step 100, and the job completes with every sample of the epoch used
// exactly once. The join and recovery times are measured from the ledgers.
// It is timing-sensitive (the job must outlast a worker's start), so it runs
// in make integ, without the race detector's slowdown.
func TestElasticJoinAndKill(t *testing.T) {
	r := startElastic(t, 230)
	r.waitStep(50)
	joinAt := time.Now()
	x0, x1 := r.join("x0"), r.join("x1")
	r.waitTrained(map[string]*proc{"x0": x0, "x1": x1})
	r.waitStep(100)
	killAt := time.Now()
	_ = syscall.Kill(x1.cmd.Process.Pid, syscall.SIGKILL)
	r.waitStep(150)
	r.assertLostByReport("x1", true)
	r.finish()
	// The surviving joiner ran to the end: it was never restarted.
	if err := waitExit(t, x0, "x0", time.Minute); err != nil {
		t.Fatalf("joined worker x0 exited with %v\n%s", err, x0.stderr)
	}
	var firstJoined int64
	for _, e := range readLedgers(t, filepath.Join(r.ledger, "x0")) {
		if firstJoined == 0 || e.UnixNano < firstJoined {
			firstJoined = e.UnixNano
		}
	}
	// Recovery: the first step completed without the killed worker (after
	// the last step it completed, which its peers may finish just after
	// the kill).
	recovery := r.firstStepAfter(r.lastStep("x1"), killAt)
	attempts, lost := abandonedSteps(r.log()+x0.stderr.String(), readLedgers(t, r.ledger))
	joinLatency := time.Duration(firstJoined - joinAt.UnixNano())
	t.Logf("join: first trained step %v after the worker started; SIGKILL at step %d: next completed step after %v; steps lost: %d (%d attempts abandoned by survivors)",
		joinLatency.Round(time.Millisecond), r.lastStep("x1"), recovery.Round(time.Millisecond), lost, attempts)
	if lost > 1 {
		t.Errorf("%d steps lost to one failure; at most one may be", lost)
	}
	if firstJoined == 0 || recovery < 0 || joinLatency > 30*time.Second || recovery > 30*time.Second {
		t.Fatalf("join %v, recovery %v: the job stalled", joinLatency, recovery)
	}
}

// A worker SIGKILLed and restarted at once under its id (as a supervisor
// does) takes its registration over instead of being refused while the dead
// process's lease runs: the new process trains, and the job completes with
// every sample used exactly once.
func TestRestartedWorkerTakesOver(t *testing.T) {
	r := startElastic(t, 200)
	r.waitStep(30)
	x0 := r.join("x0")
	r.waitTrained(map[string]*proc{"x0": x0})
	_ = syscall.Kill(x0.cmd.Process.Pid, syscall.SIGKILL)
	<-x0.done
	again := r.joinAs("x0", "x0-again")
	r.waitTrained(map[string]*proc{"x0-again": again})
	r.finish()
	if err := waitExit(t, again, "x0", time.Minute); err != nil {
		t.Fatalf("restarted x0 exited with %v\n%s", err, again.stderr)
	}
}

// A frozen worker replaced by a new process under its id is fenced: once
// thawed, its requests name the old registration, are refused, and it stops
// with an error naming the new process, while the job completes on the new
// one with every sample used exactly once.
func TestReplacedWorkerIsFenced(t *testing.T) {
	r := startElastic(t, 200)
	r.waitStep(30)
	old := r.join("x0")
	r.waitTrained(map[string]*proc{"x0": old})
	_ = syscall.Kill(old.cmd.Process.Pid, syscall.SIGSTOP)
	repl := r.joinAs("x0", "x0-new")
	r.waitTrained(map[string]*proc{"x0-new": repl})
	_ = syscall.Kill(old.cmd.Process.Pid, syscall.SIGCONT)
	err := waitExit(t, old, "x0 (old)", time.Minute)
	if err == nil || !strings.Contains(old.stderr.String(), "taken over by a newer process") {
		t.Fatalf("the replaced process exited with %v\n%s", err, old.stderr)
	}
	r.finish()
	if err := waitExit(t, repl, "x0 (new)", time.Minute); err != nil {
		t.Fatalf("the new x0 exited with %v\n%s", err, repl.stderr)
	}
}

// The same for a GPT: two workers join a running job, one is SIGKILLed,
// the job finishes without a restart and every context window is used
// exactly once.
func TestGPTElasticJoinAndKill(t *testing.T) {
	text, err := data.LoadText("/usr/share/common-licenses", 64)
	if err != nil {
		t.Fatal(err)
	}
	r := startElasticJob(t, 120, elasticJob{yaml: `name: gpt-elastic
seed: 3
model: {kind: gpt, layers: 2, heads: 4, d_model: 64, context: 64, vocab: 256}
data: {dataset: text, path: /usr/share/common-licenses}
train: {epochs: 1, global_batch: 24}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {dir: %s}
`, batch: 24, n: text.Train.N, seed: 3, maxFinalLoss: 4})
	r.waitStep(20)
	x0, x1 := r.join("x0"), r.join("x1")
	r.waitTrained(map[string]*proc{"x0": x0, "x1": x1})
	r.waitStep(60)
	_ = syscall.Kill(x1.cmd.Process.Pid, syscall.SIGKILL)
	r.finish()
	if err := waitExit(t, x0, "x0", time.Minute); err != nil {
		t.Fatalf("joined worker x0 exited with %v\n%s", err, x0.stderr)
	}
	if n := r.lastStep("x1"); n <= 0 || n >= 120 {
		t.Fatalf("killed worker's last step %d: it should have trained some steps and not the end", n)
	}
}

// A worker whose link goes silent (SIGSTOP: the process is frozen, its
// sockets stay open, nothing more arrives from it) is dropped once a peer's
// step watchdog reports the stalled step and the coordinator finds its
// heartbeats stopped (long before its lease), and the others go on without it; once thawed it finds its lease
// gone, registers again and rejoins with state from a live peer. Every
// sample is used exactly once.
func TestSilentWorkerDroppedAndRejoins(t *testing.T) {
	r := startElastic(t, 230)
	r.waitStep(50)
	x0, x1 := r.join("x0"), r.join("x1")
	r.waitTrained(map[string]*proc{"x0": x0, "x1": x1})
	r.waitStep(100)
	stopAt := time.Now()
	_ = syscall.Kill(x1.cmd.Process.Pid, syscall.SIGSTOP)
	r.waitStep(130)
	r.assertLostByReport("x1", false)
	contAt := time.Now()
	_ = syscall.Kill(x1.cmd.Process.Pid, syscall.SIGCONT)
	r.finish()
	for id, p := range map[string]*proc{"x0": x0, "x1": x1} {
		if err := waitExit(t, p, id, time.Minute); err != nil {
			t.Fatalf("%s exited with %v\n%s", id, err, p.stderr)
		}
	}
	var rejoined int64
	for _, e := range readLedgers(t, filepath.Join(r.ledger, "x1")) {
		if e.UnixNano > contAt.UnixNano() && (rejoined == 0 || e.UnixNano < rejoined) {
			rejoined = e.UnixNano
		}
	}
	lastBefore := 0
	for _, e := range readLedgers(t, filepath.Join(r.ledger, "x1")) {
		if e.UnixNano < stopAt.UnixNano() {
			lastBefore = max(lastBefore, e.Step)
		}
	}
	next := r.firstStepAfter(lastBefore, stopAt)
	t.Logf("SIGSTOP: next completed step %v later; after SIGCONT x1 trained again %v later",
		next.Round(time.Millisecond), time.Duration(rejoined-contAt.UnixNano()).Round(time.Millisecond))
	if next < 0 || next > 30*time.Second || rejoined == 0 {
		t.Fatalf("stall after SIGSTOP (%v) or no rejoin (%d)\nlauncher:\n%s\nx1:\n%s", next, rejoined, r.log(), x1.stderr)
	}
}

// A worker that joins and dies while it receives its state (the
// state-transfer failpoint SIGKILLs it after the weights, before the
// optimizer state) does not stall the others: they give up on the
// generation, its lease expires, and they go on without it, from their own
// state, losing no sample.
func TestJoinerDiesDuringStateTransfer(t *testing.T) {
	r := startElastic(t, 150)
	r.waitStep(20)
	x0 := r.join("x0", "LOOM_FAILPOINTS=state-transfer")
	err := waitExit(t, x0, "x0", time.Minute)
	diedAt := time.Now()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("x0 should have been killed at the failpoint, exited with %v\n%s", err, x0.stderr)
	}
	if hasLedger(filepath.Join(r.ledger, "x0.jsonl")) {
		t.Fatal("x0 trained a step before its state arrived")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	resp, gerr := r.client.GetJob(ctx, &api.GetJobRequest{JobId: r.jobID})
	cancel()
	if gerr != nil {
		t.Fatal(gerr)
	}
	stepAtDeath := int(resp.GetJob().GetStep())
	r.finish()
	next := r.firstStepAfter(stepAtDeath, diedAt)
	t.Logf("joiner killed during state transfer at step %d: next completed step %v later", stepAtDeath, next.Round(time.Millisecond))
	if next < 0 || next > 30*time.Second {
		t.Fatalf("the job stalled after the joiner died: next step after %v\n%s", next, r.log())
	}
}

// loom workers drain removes a worker at a step boundary: it exits with
// status 0, no survivor abandons a step, and every sample is used exactly
// once.
func TestDrainWorker(t *testing.T) {
	r := startElastic(t, 200)
	r.waitStep(20)
	x0, x1 := r.join("x0"), r.join("x1")
	r.waitTrained(map[string]*proc{"x0": x0, "x1": x1})
	drainAt := time.Now()
	out, err := runLoom(t, "workers", "drain", "x1", "--coordinator", r.addr, "--wait", "1m")
	if err != nil || !strings.Contains(out, "x1 drained and left") {
		t.Fatalf("drain: %v\n%s\nx1:\n%s", err, out, x1.stderr)
	}
	if err := waitExit(t, x1, "x1", 30*time.Second); err != nil {
		t.Fatalf("drained worker exited with %v\n%s", err, x1.stderr)
	}
	left := time.Since(drainAt)
	if !strings.Contains(x1.stderr.String(), "drained: left the job at a step boundary") {
		t.Errorf("x1 log lacks the drain message:\n%s", x1.stderr)
	}
	lastX1 := r.lastStep("x1")
	r.finish()
	if err := waitExit(t, x0, "x0", time.Minute); err != nil {
		t.Fatalf("x0 exited with %v\n%s", err, x0.stderr)
	}
	abandoned, _ := abandonedSteps(r.log()+x0.stderr.String()+x1.stderr.String(), nil)
	next := r.firstStepAfter(lastX1, drainAt)
	t.Logf("drain: worker gone %v after the command; its last step %d; next step completed %v after the command; %d step attempts abandoned",
		left.Round(time.Millisecond), lastX1, next.Round(time.Millisecond), abandoned)
	if !strings.Contains(r.log(), `"left": ["x1"]`) {
		t.Errorf("the launcher did not log x1 leaving:\n%s", r.log())
	}
	if abandoned != 0 {
		t.Fatalf("a drain abandoned %d step attempts\nlauncher:\n%s\nx0:\n%s\nx1:\n%s", abandoned, r.log(), x0.stderr, x1.stderr)
	}
}

var abandonedRE = regexp.MustCompile(`step abandoned.*"generation": (\d+), "step": (\d+)`)

// abandonedSteps counts the "step abandoned" log lines in logs and the
// distinct steps they name whose work was lost: those that no rank completed
// in the generation they were abandoned in (by completed, a ledger's
// entries). A rank whose left neighbour died in the middle of the all-gather
// abandons a step that the others, who had all the pieces, completed; that
// step was not lost.
func abandonedSteps(logs string, completed []train.LedgerEntry) (attempts, lost int) {
	type key struct{ gen, step int64 }
	done := map[key]bool{}
	for _, e := range completed {
		if !e.Tentative {
			done[key{e.Gen, int64(e.Step)}] = true
		}
	}
	seen := map[key]bool{}
	for _, m := range abandonedRE.FindAllStringSubmatch(logs, -1) {
		attempts++
		gen, _ := strconv.ParseInt(m[1], 10, 64)
		step, _ := strconv.ParseInt(m[2], 10, 64)
		if k := (key{gen, step}); !done[k] {
			seen[k] = true
		}
	}
	return attempts, len(seen)
}

// proc is a worker process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	done   chan error
}

func mustDial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := api.Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func hasLedger(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Size() > 0
}

// hasCompletedStep reports whether the ledger at path has a line for a
// completed (not tentative) step.
func hasCompletedStep(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		var e train.LedgerEntry
		if json.Unmarshal([]byte(line), &e) == nil && !e.Tentative {
			return true
		}
	}
	return false
}

// A checkpoint directory that becomes unwritable mid-run (replaced by a
// file: every later write fails, as on a full disk) is not silent: rank 0
// reports each failed write on the job, the job completes with the failures
// counted and no final checkpoint, the summary says so, and loom launch
// exits non-zero.
func TestCheckpointFailureIsLoud(t *testing.T) {
	dir := t.TempDir()
	ckDir := filepath.Join(dir, "ckpt")
	job := writeJob(t, fmt.Sprintf(`name: ckfail
seed: 5
model: {kind: mlp, layers: [784, 64, 10]}
train: {epochs: 1, global_batch: 256}
checkpoint: {dir: %s, every_steps: 20}
`, ckDir))
	c := loomCmd(t, "launch", job, "--workers", "2", "--device", elasticDevice, "--max-steps", "120", "--json")
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(ckDir, "ckfail", "step-*")); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint written\n%s", stderr.String())
		}
	}
	if err := os.RemoveAll(ckDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ckDir, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := c.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("launch exited with %v; want non-zero\n%s", err, stderr.String())
	}
	var s train.Summary
	if err := json.Unmarshal([]byte(stdout.String()), &s); err != nil {
		t.Fatalf("summary %q: %v\n%s", stdout.String(), err, stderr.String())
	}
	if s.Status != "completed" || s.Steps != 120 || s.CheckpointError == "" || s.CheckpointFailures < 1 || s.Checkpoint != "" {
		t.Fatalf("summary %+v: want completed with failed checkpoints and no final one\n%s", s, stderr.String())
	}
	if !strings.Contains(stderr.String(), "final checkpoint was not saved") {
		t.Fatalf("launch did not say the final checkpoint is missing:\n%s", stderr.String())
	}
}

// Ctrl-C on a launch with workers cancels the job and still prints the
// summary (status interrupted, the steps trained), exiting 130.
func TestInterruptedClusterLaunchPrintsSummary(t *testing.T) {
	r := startElastic(t, 230)
	r.waitStep(20)
	if err := r.launcher.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := r.launcher.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("launch exited with %v; want 130\n%s", err, r.log())
	}
	var s train.Summary
	if err := json.Unmarshal([]byte(r.stdout.String()), &s); err != nil || s.Status != "interrupted" || s.Steps < 1 || s.Steps >= 230 {
		t.Fatalf("summary %q (%v)\n%s", r.stdout.String(), err, r.log())
	}
}
