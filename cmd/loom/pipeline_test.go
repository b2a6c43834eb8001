package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/train"
)

const pipeJobYAML = `name: pipe
seed: 5
model: {kind: gpt, layers: 3, heads: 2, d_model: 32, context: 32, vocab: 256, tie_embeddings: false}
data: {dataset: text, path: /usr/share/common-licenses}
train: {epochs: 1, global_batch: 12, max_steps: 8, eval_every: 4}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {disabled: true}
`

func launchSummary(t *testing.T, args ...string) train.Summary {
	t.Helper()
	out, err := runLoom(t, append([]string{"launch", "--json", "--quiet", "--device", "cpu:threads=1"}, args...)...)
	if err != nil {
		t.Fatalf("loom launch %v: %v\n%s", args, err, out)
	}
	var s train.Summary
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("no JSON summary: %v\n%s", err, out)
	}
	return s
}

// A GPT cut into 2 pipeline stages over 3 worker processes (one stage on
// two of them) trains from the CLI to the loss and held-out accuracy of
// one process, and the summary shows each stage's blocks and workers.
func TestLaunchPipelineStages(t *testing.T) {
	job := writeJob(t, pipeJobYAML)
	one := launchSummary(t, job)
	pipe := launchSummary(t, job, "--workers", "3", "--pipeline-stages", "2")
	if pipe.Status != "completed" || pipe.Steps != 8 || pipe.Workers != 3 {
		t.Fatalf("pipeline summary %+v", pipe)
	}
	if math.Abs(pipe.FinalLoss-one.FinalLoss) > 1e-4*one.FinalLoss || math.Abs(pipe.TestLoss-one.TestLoss) > 1e-4*one.TestLoss ||
		math.Abs(pipe.TestAccuracy-one.TestAccuracy) > 1e-6 {
		t.Errorf("pipeline: loss %v, test loss %v, accuracy %v; one process: %v, %v, %v",
			pipe.FinalLoss, pipe.TestLoss, pipe.TestAccuracy, one.FinalLoss, one.TestLoss, one.TestAccuracy)
	}
	stages := map[int]string{}
	var total int64
	for _, r := range pipe.Shares {
		stages[r.Stage] = r.Blocks
		if r.Stage == 0 {
			total += r.Samples
		}
	}
	if len(stages) != 2 || stages[0] == "" || stages[1] == "" || total != 12 {
		t.Errorf("shares %+v: want two stages with their blocks, stage 0's shares summing to 12", pipe.Shares)
	}
}

// Pipeline settings a launch cannot run are refused before any work, with
// the reason.
func TestLaunchRefusesBadPipelines(t *testing.T) {
	good := writeJob(t, pipeJobYAML)
	for _, tc := range []struct {
		name string
		yaml string
		args []string
		want string
	}{
		{"one process", pipeJobYAML, []string{"--pipeline-stages", "2"}, "use --workers N (N >= 2)"},
		{"fewer workers", pipeJobYAML, []string{"--workers", "2", "--pipeline-stages", "3"}, "--workers 2 is fewer than the 3 pipeline stages"},
		{"more stages than layers", pipeJobYAML, []string{"--workers", "4", "--pipeline-stages", "4"}, "4 is more than the model's 3 layers"},
		{"not a count", pipeJobYAML, []string{"--workers", "2", "--pipeline-stages", "two"}, `--pipeline-stages "two": want a stage count`},
		{"tied", strings.Replace(pipeJobYAML, "tie_embeddings: false", "tie_embeddings: true", 1), []string{"--workers", "2", "--pipeline-stages", "2"}, "needs model.tie_embeddings: false"},
		{"micro below stages", strings.Replace(pipeJobYAML, "max_steps: 8", "max_steps: 8, micro_batches: 2", 1), []string{"--workers", "3", "--pipeline-stages", "3"}, "1F1B needs a micro-batch for every stage"},
		{"schedule", pipeJobYAML, []string{"--workers", "2", "--pipeline-stages", "2", "--pipeline-schedule", "zigzag"}, `"zigzag" unknown (want 1f1b or gpipe)`},
		{"partition", pipeJobYAML, []string{"--workers", "2", "--pipeline-stages", "2", "--pipeline-partition", "parameters"}, `--pipeline-partition "parameters": want measured or uniform`},
		{"partition in the config", strings.Replace(pipeJobYAML, "checkpoint: {disabled: true}", "checkpoint: {disabled: true}\ncluster: {pipeline_partition: even}", 1), []string{"--workers", "2", "--pipeline-stages", "2"}, `cluster.pipeline_partition: "even" unknown (want measured or uniform)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := good
			if tc.yaml != pipeJobYAML {
				job = writeJob(t, tc.yaml)
			}
			out, err := runLoom(t, append([]string{"launch", job}, tc.args...)...)
			if err == nil || !strings.Contains(out+err.Error(), tc.want) {
				t.Errorf("got %v\n%s\nwant an error containing %q", err, out, tc.want)
			}
		})
	}
}

// Checkpoints of a pipeline: each stage writes its layers as one shard of
// the checkpoint, one manifest covers the whole model (with Hugging Face's
// sharded index), and a checkpoint resumes on any layout: a 2-stage
// checkpoint on one process and on 3 stages, a one-process checkpoint on
// 2 stages. Every resumed run ends with the held-out loss and accuracy of
// the run that never stopped.
func TestPipelineCheckpointsResumeOnAnyLayout(t *testing.T) {
	dir := t.TempDir()
	withDir := func(name string) string {
		y := strings.Replace(pipeJobYAML, "checkpoint: {disabled: true}", fmt.Sprintf("checkpoint: {dir: %s, every_steps: 4, keep: 0}", filepath.Join(dir, name)), 1)
		return writeJob(t, y)
	}
	one := launchSummary(t, writeJob(t, pipeJobYAML))
	same := func(what string, s train.Summary) {
		t.Helper()
		if s.Status != "completed" || s.Steps != 8 || math.Abs(s.TestLoss-one.TestLoss) > 1e-4*one.TestLoss || math.Abs(s.TestAccuracy-one.TestAccuracy) > 1e-6 {
			t.Fatalf("%s: summary %+v; the run that never stopped: test loss %v, accuracy %v", what, s, one.TestLoss, one.TestAccuracy)
		}
	}
	staged := withDir("staged")
	same("2 stages", launchSummary(t, staged, "--workers", "3", "--pipeline-stages", "2"))
	step4 := filepath.Join(dir, "staged", "pipe", "step-00000004")
	for _, f := range []string{"manifest.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "optimizer-00002-of-00002.safetensors", "model.safetensors.index.json", "config.json"} {
		if _, err := os.Stat(filepath.Join(step4, f)); err != nil {
			t.Fatalf("2-stage checkpoint: %v", err)
		}
	}
	st, err := checkpoint.LoadDir(context.Background(), step4)
	if err != nil {
		t.Fatal(err)
	}
	if st.Step != 4 || len(st.Params) != 2+12*3+3 || len(st.Optim) != 2*len(st.Params) {
		t.Fatalf("2-stage checkpoint: step %d, %d parameters, %d optimizer tensors; want step 4 and every tensor of the model", st.Step, len(st.Params), len(st.Optim))
	}
	if out, err := runLoom(t, "generate", step4, "--prompt", "the ", "--max-tokens", "4", "--seed", "1"); err != nil {
		t.Fatalf("loom generate on the 2-stage checkpoint: %v\n%s", err, out)
	}
	same("2-stage checkpoint on 1 process", launchSummary(t, staged, "--resume", step4))
	same("2-stage checkpoint on 3 stages", launchSummary(t, staged, "--resume", step4, "--workers", "3", "--pipeline-stages", "3"))
	whole := withDir("whole")
	same("1 process", launchSummary(t, whole))
	same("1-process checkpoint on 2 stages", launchSummary(t, whole, "--resume", filepath.Join(dir, "whole", "pipe", "step-00000004"), "--workers", "2", "--pipeline-stages", "2"))
}
