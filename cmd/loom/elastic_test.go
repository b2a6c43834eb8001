//go:build integ

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
)

var submittedRE = regexp.MustCompile(`submitted\s+\{"job": "([^"]+)", "coordinator": \["([^"]+)"\]`)

// Elastic membership, end to end: 2 workers start the job, 2 more join
// early (state from a live peer, no restart), one of them is SIGKILLed once
// both have trained, and the job completes with every sample of the epoch used
// exactly once. The join and recovery times are measured from the ledgers.
// It is timing-sensitive (the job must outlast a worker's start), so it runs
// in make integ, without the race detector's slowdown.
func TestElasticJoinAndKill(t *testing.T) {
	dir := t.TempDir()
	ledger := filepath.Join(dir, "ledger")
	job := writeJob(t, fmt.Sprintf(`name: elastic
seed: 5
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 1, global_batch: 256}
optimizer: {kind: adamw, lr: 0.002}
checkpoint: {dir: %s}
`, filepath.Join(dir, "ckpt")))
	// slowdown=3 keeps the job long enough to join and kill in its middle.
	const dev = "cpu:threads=1,slowdown=3"
	launcher := loomCmd(t, "launch", job, "--workers", "2", "--device", dev, "--max-steps", "230",
		"--json", "--sample-ledger", ledger)
	stderr, _ := launcher.StderrPipe()
	var stdout strings.Builder
	launcher.Stdout = &stdout
	if err := launcher.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logText strings.Builder
	found := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logText.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := submittedRE.FindStringSubmatch(sc.Text()); m != nil {
				found <- [2]string{m[1], m[2]}
			}
		}
	}()
	var jobID, addr string
	select {
	case m := <-found:
		jobID, addr = m[0], m[1]
	case <-time.After(time.Minute):
		t.Fatal("launcher did not report the submitted job")
	}
	client := api.NewCoordinatorClient(mustDial(t, addr))
	waitStep := func(step int64) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r, err := client.GetJob(ctx, &api.GetJobRequest{JobId: jobID})
			cancel()
			if err == nil && r.GetJob().GetStep() >= step {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("job did not reach step %d", step)
	}

	waitStep(20)
	joinAt := time.Now()
	extra := make([]*proc, 2)
	for i := range extra {
		id := fmt.Sprintf("x%d", i)
		c := loomCmd(t, "worker", "--coordinator", addr, "--job", jobID, "--id", id, "--device", dev,
			"--log-level", "warn", "--sample-ledger", filepath.Join(ledger, id+".jsonl"))
		var errBuf strings.Builder
		c.Stderr = &errBuf
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		extra[i] = &proc{cmd: c, stderr: &errBuf, done: make(chan error, 1)}
		go func(e *proc) { e.done <- e.cmd.Wait() }(extra[i])
	}
	// Kill x1 once both joiners have trained a step.
	deadline := time.Now().Add(2 * time.Minute)
	for !hasLedger(filepath.Join(ledger, "x0.jsonl")) || !hasLedger(filepath.Join(ledger, "x1.jsonl")) {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("the joined workers trained no step\nlauncher:\n%s\nx0:\n%s\nx1:\n%s", logText.String(), extra[0].stderr, extra[1].stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	killAt := time.Now()
	_ = syscall.Kill(extra[1].cmd.Process.Pid, syscall.SIGKILL)

	if err := launcher.Wait(); err != nil {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("launcher: %v\n%s", err, logText.String())
	}
	var s struct {
		Status       string  `json:"status"`
		Steps        int     `json:"steps"`
		TestAccuracy float64 `json:"test_accuracy"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &s); err != nil || s.Status != "completed" || s.Steps != 230 || s.TestAccuracy < 0.9 {
		t.Fatalf("summary %q (%v)", stdout.String(), err)
	}
	select { // the surviving joiner ran to the end: it was never restarted
	case err := <-extra[0].done:
		if err != nil {
			t.Fatalf("joined worker x0 exited with %v\n%s", err, extra[0].stderr)
		}
	case <-time.After(time.Minute):
		t.Fatal("joined worker x0 did not finish with the job")
	}

	entries := readLedgers(t, ledger)
	assertExactlyOnce(t, entries, 230, 256, 5)
	var firstJoined, firstAfterKill int64
	for _, e := range readLedgers(t, filepath.Join(ledger, "x0")) {
		if firstJoined == 0 || e.UnixNano < firstJoined {
			firstJoined = e.UnixNano
		}
	}
	// Recovery: the first step completed without the killed worker (after
	// the last step it completed, which its peers may finish just after
	// the kill).
	lastKilled := 0
	for _, e := range readLedgers(t, filepath.Join(ledger, "x1")) {
		lastKilled = max(lastKilled, e.Step)
	}
	for _, e := range entries {
		if e.Step > lastKilled && e.UnixNano > killAt.UnixNano() && (firstAfterKill == 0 || e.UnixNano < firstAfterKill) {
			firstAfterKill = e.UnixNano
		}
	}
	mu.Lock()
	abandoned := strings.Count(logText.String(), "step abandoned") + strings.Count(extra[0].stderr.String(), "step abandoned")
	mu.Unlock()
	joinLatency := time.Duration(firstJoined - joinAt.UnixNano())
	recovery := time.Duration(firstAfterKill - killAt.UnixNano())
	t.Logf("join: first trained step %v after the worker started; SIGKILL: next completed step after %v; %d step attempts abandoned by survivors",
		joinLatency.Round(time.Millisecond), recovery.Round(time.Millisecond), abandoned)
	if firstJoined == 0 || firstAfterKill == 0 || joinLatency > 30*time.Second || recovery > 30*time.Second {
		t.Fatalf("join %v, recovery %v: the job stalled", joinLatency, recovery)
	}
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
