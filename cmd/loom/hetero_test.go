package main

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// A worker throttled to half speed (slowdown=2) gets about a third of each
// global batch once the planner has measured both: shares follow speed.
func TestHeterogeneousWorkersGetProportionalShares(t *testing.T) {
	dir := t.TempDir()
	job := writeJob(t, fmt.Sprintf(`name: hetero
seed: 3
model: {kind: mlp, layers: [784, 512, 10]}
train: {epochs: 2, global_batch: 256}
optimizer: {kind: sgd, lr: 0.01}
schedule: {kind: constant}
checkpoint: {dir: %s}
`, filepath.Join(dir, "ckpt")))
	s := summaryOf(t, 4*time.Minute, "launch", job, "--workers", "2", "--max-steps", "300",
		"--worker-devices", "cpu:threads=1;cpu:threads=1,slowdown=2", "--sample-ledger", filepath.Join(dir, "ledger"))
	if s.Status != "completed" || s.Steps != 300 {
		t.Fatalf("summary %+v", s)
	}
	fast, slow := 0, 0
	for _, f := range []string{"w0", "w1"} {
		for _, e := range readLedgers(t, filepath.Join(dir, "ledger", f)) {
			if e.Step <= 200 { // leave time to measure and re-plan
				continue
			}
			if f == "w0" {
				fast += len(e.Samples)
			} else {
				slow += len(e.Samples)
			}
		}
	}
	frac := float64(fast) / float64(fast+slow)
	t.Logf("fast worker's share over steps 201-300: %.3f", frac)
	if frac < 0.56 || frac > 0.8 {
		t.Fatalf("fast worker took %.3f of the samples, want about 2/3", frac)
	}
	// The summary shows the last plan's split, which the ledgers followed.
	if len(s.Shares) != 2 || s.Shares[0].Samples+s.Shares[1].Samples != 256 {
		t.Fatalf("summary shares %+v, want two ranks summing to the global batch 256", s.Shares)
	}
	for _, r := range s.Shares {
		if f := float64(r.Samples) / 256; r.Worker == "w0" && (f < 0.56 || f > 0.8) {
			t.Errorf("summary gives the fast worker %d of 256 samples, want about 2/3", r.Samples)
		}
	}
}
