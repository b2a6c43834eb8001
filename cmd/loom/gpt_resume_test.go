package main

import (
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/train"
)

const gptJobYAML = `name: %s
seed: 11
model: {kind: gpt, layers: 2, heads: 2, d_model: 32, context: 32, vocab: 256}
data: {dataset: text, path: /usr/share/common-licenses}
train: {epochs: 1, global_batch: 12, log_every: 10}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {dir: %s, every_steps: 10, keep: 0}
`

// A GPT trained by 2 worker processes is SIGKILLed after a checkpoint and
// resumes on 3: it trains to the end, its loss falls, and the workers'
// sample ledgers show every context window of the interrupted epoch used
// exactly once.
func TestGPTKilledOnTwoResumesOnThree(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	job := writeJob(t, fmt.Sprintf(gptJobYAML, "gptworld", ckpt))
	cmd := loomCmd(t, "launch", job, "--workers", "2", "--device", "cpu:threads=1", "--quiet", "--max-steps", "60",
		"--sample-ledger", filepath.Join(dir, "run1"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitPublished(t, ckpt, "gptworld", 20, 3*time.Minute, exited)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited

	store, _ := checkpoint.NewLocalStorage(ckpt)
	infos, err := checkpoint.List(t.Context(), store, "gptworld")
	if err != nil || len(infos) == 0 {
		t.Fatal(err, infos)
	}
	last := infos[len(infos)-1]
	if last.Step >= 60 || last.WorldSize != 2 {
		t.Fatalf("newest checkpoint %+v: want one from 2 workers before the end", last)
	}
	s := summaryOf(t, 5*time.Minute, "launch", job, "--workers", "3", "--device", "cpu:threads=1", "--max-steps", "60",
		"--resume", "latest", "--sample-ledger", filepath.Join(dir, "run2"))
	if s.Status != "completed" || s.Steps != 60 || s.Workers != 3 || !(s.FinalLoss < 4) {
		t.Fatalf("resumed summary %+v (byte-level loss starts at ln 256 = 5.55)", s)
	}
	var entries []train.LedgerEntry
	for _, e := range readLedgers(t, filepath.Join(dir, "run1")) {
		if e.Step <= last.Step { // later steps of the killed run were redone
			entries = append(entries, e)
		}
	}
	entries = append(entries, readLedgers(t, filepath.Join(dir, "run2"))...)
	text, err := data.LoadText("/usr/share/common-licenses", 32)
	if err != nil {
		t.Fatal(err)
	}
	assertExactlyOnceOf(t, entries, text.Train.N, 60, 12, 11)
}
