package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/train"
)

// readLosses reads a --metrics file into step -> loss.
func readLosses(t *testing.T, path string) map[int]float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m struct {
			Step int     `json:"step"`
			Loss float64 `json:"loss"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		out[m.Step] = m.Loss
	}
	return out
}

// waitPublished polls until dir/job/step-NNNNNNNN holds a manifest (it
// appears only by the atomic publish of a complete checkpoint).
func waitPublished(t *testing.T, dir, job string, step int, timeout time.Duration, exited <-chan error) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(checkpoint.StepDir(job, step)), checkpoint.ManifestFile)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(p); err == nil {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("process exited (%v) before checkpoint %d was published", err, step)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("checkpoint %s not published within %v", p, timeout)
}

func tensorsOf(t *testing.T, dir, job string, step int) [][]float32 {
	t.Helper()
	store, _ := checkpoint.NewLocalStorage(dir)
	s, err := checkpoint.Load(t.Context(), store, checkpoint.StepDir(job, step))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]float32
	for _, x := range append(s.Params, s.Optim...) {
		out = append(out, x.Data)
	}
	return out
}

// contJob is the continuation test's job; %s is its checkpoint directory.
const contJob = `name: cont
seed: 11
model: {kind: mlp, layers: [784, 512, 256, 10]}
train: {epochs: 1, max_steps: 100, global_batch: 256}
optimizer: {kind: adamw, lr: 0.002}
schedule: {kind: cosine, warmup_steps: 10}
checkpoint: {dir: %s, every_steps: 50, keep: 0}
`

// 100 steps straight vs 50 steps, kill -9 after the step-50 checkpoint,
// resume, 50 more: identical parameters and optimizer state (bitwise) and
// an identical loss curve.
func TestBitwiseContinuationAfterKill(t *testing.T) {
	dir := t.TempDir()
	job := writeJob(t, fmt.Sprintf(contJob, filepath.Join(dir, "a")))
	summaryOf(t, 5*time.Minute, "launch", job, "--device", "cpu:threads=1", "--metrics", filepath.Join(dir, "a.jsonl"))
	straight := readLosses(t, filepath.Join(dir, "a.jsonl"))

	// The interrupted run: same config, its own checkpoint directory.
	jobB := writeJob(t, fmt.Sprintf(contJob, filepath.Join(dir, "b")))
	cmd := loomCmd(t, "launch", jobB, "--device", "cpu:threads=1", "--quiet", "--metrics", filepath.Join(dir, "b1.jsonl"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitPublished(t, filepath.Join(dir, "b"), "cont", 50, 3*time.Minute, exited)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	if _, err := os.Stat(filepath.Join(dir, "b", "cont", "step-00000100")); err == nil {
		t.Fatal("the run finished before it was killed; the test proves nothing")
	}
	s := summaryOf(t, 5*time.Minute, "launch", jobB, "--device", "cpu:threads=1", "--resume", "latest", "--metrics", filepath.Join(dir, "b2.jsonl"))
	if s.Steps != 100 {
		t.Fatalf("resumed run ended at step %d", s.Steps)
	}
	resumed := readLosses(t, filepath.Join(dir, "b2.jsonl"))
	for step := 51; step <= 100; step++ {
		if resumed[step] != straight[step] {
			t.Fatalf("step %d: loss %v after resume, %v straight", step, resumed[step], straight[step])
		}
	}
	if _, ok := resumed[50]; ok {
		t.Fatal("resumed run repeated step 50")
	}
	a, b := tensorsOf(t, filepath.Join(dir, "a"), "cont", 100), tensorsOf(t, filepath.Join(dir, "b"), "cont", 100)
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			t.Fatalf("tensor %d differs between the straight and the resumed run", i)
		}
	}
}

// A job checkpointed by 2 workers, killed, resumes on 3: training
// continues to the end of the epoch and, from the workers' sample ledgers,
// every sample of the interrupted epoch is used exactly once.
func TestResumeOnDifferentWorldSize(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	job := writeJob(t, fmt.Sprintf(smallJobYAML, "world", 1000, ckpt, 10))
	s, entries := killResumeOnThree(t, dir, ckpt, job, "world")
	if s.TestAccuracy < 0.85 {
		t.Fatalf("resumed summary %+v", s)
	}
	assertExactlyOnce(t, entries, 60, 1000, 7)
}

// killResumeOnThree launches job (named name, checkpointing every 10 steps
// into ckpt) on 2 workers for 60 steps, SIGKILLs them once the checkpoint of
// step 20 is published, checks that the newest checkpoint is one of the 2
// workers before the end, and resumes it on 3 workers to step 60. It
// returns the resumed run's summary and the ledger entries that count: the
// killed run's up to its newest checkpoint (later steps were redone), then
// the resumed run's.
func killResumeOnThree(t *testing.T, dir, ckpt, job, name string) (train.Summary, []train.LedgerEntry) {
	t.Helper()
	cmd := loomCmd(t, "launch", job, "--workers", "2", "--device", "cpu:threads=1", "--quiet", "--max-steps", "60",
		"--sample-ledger", filepath.Join(dir, "run1"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitPublished(t, ckpt, name, 20, 3*time.Minute, exited)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited

	store, _ := checkpoint.NewLocalStorage(ckpt)
	infos, err := checkpoint.List(t.Context(), store, name)
	if err != nil || len(infos) == 0 {
		t.Fatal(err, infos)
	}
	last := infos[len(infos)-1]
	if last.Step >= 60 || last.WorldSize != 2 {
		t.Fatalf("newest checkpoint %+v: want one from 2 workers before the end", last)
	}
	s := summaryOf(t, 5*time.Minute, "launch", job, "--workers", "3", "--device", "cpu:threads=1", "--max-steps", "60",
		"--resume", "latest", "--sample-ledger", filepath.Join(dir, "run2"))
	if s.Status != "completed" || s.Steps != 60 || s.Workers != 3 {
		t.Fatalf("resumed summary %+v", s)
	}
	var entries []train.LedgerEntry
	for _, e := range readLedgers(t, filepath.Join(dir, "run1")) {
		if e.Step <= last.Step {
			entries = append(entries, e)
		}
	}
	return s, append(entries, readLedgers(t, filepath.Join(dir, "run2"))...)
}
