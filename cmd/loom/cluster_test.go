package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/train"
)

// loomCmd returns the test binary started as the loom CLI.
func loomCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "LOOM_TEST_AS_CLI=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Whatever the test's outcome, no process of it survives the test. The
	// test itself waits for the command (a second Wait here would race).
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	return cmd
}

// summaryOf runs the loom CLI as a process and decodes its --json summary.
func summaryOf(t *testing.T, timeout time.Duration, args ...string) train.Summary {
	t.Helper()
	cmd := loomCmd(t, append(args, "--json", "--quiet")...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("loom %v did not finish in %v\n%s", args, timeout, stderr.String())
	}
	if err != nil {
		t.Fatalf("loom %v: %v\n%s", args, err, stderr.String())
	}
	var s train.Summary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("summary: %v\n%s\n%s", err, out, stderr.String())
	}
	return s
}

const smallJobYAML = `name: %s
seed: 7
model: {kind: mlp, layers: [784, 64, 10]}
train: {epochs: 1, global_batch: %d, log_every: 10}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {dir: %s, every_steps: %d, keep: 0}
`

// Two local worker processes behind the embedded coordinator train the job
// to completion, and the summary comes back from the coordinator.
func TestLaunchWorkersEndToEnd(t *testing.T) {
	dir := t.TempDir()
	job := writeJob(t, fmt.Sprintf(smallJobYAML, "ddp", 200, filepath.Join(dir, "ckpt"), 20))
	s := summaryOf(t, 3*time.Minute, "launch", job, "--workers", "2", "--device", "cpu:threads=1", "--max-steps", "40", "--sample-ledger", filepath.Join(dir, "ledger"))
	if s.Status != "completed" || s.Steps != 40 || s.Workers != 2 || s.TestAccuracy < 0.85 {
		t.Fatalf("unexpected summary %+v", s)
	}
	entries := readLedgers(t, filepath.Join(dir, "ledger"))
	assertExactlyOnce(t, entries, 40, 200, 7)
	store, _ := checkpoint.NewLocalStorage(filepath.Join(dir, "ckpt"))
	infos, err := checkpoint.List(t.Context(), store, "ddp")
	if err != nil || len(infos) != 2 || infos[1].Step != 40 || infos[1].WorldSize != 2 {
		t.Fatalf("checkpoints: %v %+v", err, infos)
	}
}

// readLedgers reads every *.jsonl sample ledger in dir, or the one ledger
// dir.jsonl, and returns the entries that count (train.ReconcileLedgers:
// completed steps, and the tentative parts of killed ranks in steps the
// others completed).
func readLedgers(t *testing.T, dir string) []train.LedgerEntry {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if _, err := os.Stat(dir + ".jsonl"); err == nil {
		files = []string{dir + ".jsonl"}
	}
	if len(files) == 0 {
		t.Fatalf("no ledgers in %s", dir)
	}
	var all [][]train.LedgerEntry
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		var es []train.LedgerEntry
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var e train.LedgerEntry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			es = append(es, e)
		}
		fh.Close()
		all = append(all, es)
	}
	return train.ReconcileLedgers(all)
}

// assertExactlyOnce checks that the ledger's steps 1..steps consumed, in
// epoch order, exactly the first steps×batch samples of the sampler's
// (seed, epoch) permutations, each once.
func assertExactlyOnce(t *testing.T, entries []train.LedgerEntry, steps, batch int, seed uint64) {
	t.Helper()
	assertExactlyOnceOf(t, entries, 60000, steps, batch, seed)
}

// assertExactlyOnceOf is assertExactlyOnce for a training set of n samples
// (context windows for a text dataset).
func assertExactlyOnceOf(t *testing.T, entries []train.LedgerEntry, n, steps, batch int, seed uint64) {
	t.Helper()
	if err := train.CheckExactlyOnce(entries, n, steps, batch, seed); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
