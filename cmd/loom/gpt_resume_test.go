package main

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/loomtrain/loom/data"
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
	s, entries := killResumeOnThree(t, dir, ckpt, job, "gptworld")
	if !(s.FinalLoss < 4) {
		t.Fatalf("resumed summary %+v (byte-level loss starts at ln 256 = 5.55)", s)
	}
	text, err := data.LoadText("/usr/share/common-licenses", 32)
	if err != nil {
		t.Fatal(err)
	}
	assertExactlyOnceOf(t, entries, text.Train.N, 60, 12, 11)
}
