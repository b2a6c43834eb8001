//go:build integ

package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example job reaches the foundation's accuracy on 2 and 4 workers.
func TestExampleAccuracyOnWorkers(t *testing.T) {
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("workers=%d", n), func(t *testing.T) {
			job := withCheckpointDir(t, "../../examples/mnist-mlp.yaml")
			s := summaryOf(t, 15*time.Minute, "launch", job, "--workers", fmt.Sprint(n), "--device", "cpu:threads=1")
			t.Logf("%d workers: accuracy %.4f, %.0f samples/s, %.1f s", n, s.TestAccuracy, s.SamplesPerSec, s.WallSeconds)
			if s.Status != "completed" || s.TestAccuracy < 0.98 {
				t.Fatalf("summary %+v: want >= 98%% test accuracy", s)
			}
		})
	}
}

// Resume 2 → 3 workers in the middle of the first epoch of the example job:
// the accuracy target is still reached and the interrupted epoch uses every
// sample exactly once.
func TestResumeOnThreeWorkersReachesTarget(t *testing.T) {
	dir := t.TempDir()
	job := withCheckpointDir(t, "../../examples/mnist-mlp.yaml")
	first := summaryOf(t, 10*time.Minute, "launch", job, "--workers", "2", "--device", "cpu:threads=1", "--max-steps", "100",
		"--sample-ledger", filepath.Join(dir, "run1"))
	if first.Steps != 100 {
		t.Fatalf("first run %+v", first)
	}
	s := summaryOf(t, 15*time.Minute, "launch", job, "--workers", "3", "--device", "cpu:threads=1", "--resume", "latest",
		"--sample-ledger", filepath.Join(dir, "run2"))
	if s.Status != "completed" || s.TestAccuracy < 0.98 || s.Workers != 3 {
		t.Fatalf("resumed summary %+v", s)
	}
	entries := append(readLedgers(t, filepath.Join(dir, "run1")), readLedgers(t, filepath.Join(dir, "run2"))...)
	assertExactlyOnce(t, entries, 234, 256, 42) // the whole first epoch (234 full steps)
}

// withCheckpointDir copies a job config with its checkpoints in a temp dir.
func withCheckpointDir(t *testing.T, path string) string {
	t.Helper()
	b := readFile(t, path)
	return writeJob(t, strings.TrimSpace(b)+"\ncheckpoint: {dir: "+filepath.Join(t.TempDir(), "ckpt")+", every_steps: 100}\n")
}
