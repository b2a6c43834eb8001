package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

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
		{"checkpoints", strings.Replace(pipeJobYAML, "checkpoint: {disabled: true}", "checkpoint: {dir: ckpt}", 1), []string{"--workers", "2", "--pipeline-stages", "2"}, "cannot write checkpoints yet"},
		{"micro below stages", strings.Replace(pipeJobYAML, "max_steps: 8", "max_steps: 8, micro_batches: 2", 1), []string{"--workers", "3", "--pipeline-stages", "3"}, "1F1B needs a micro-batch for every stage"},
		{"schedule", pipeJobYAML, []string{"--workers", "2", "--pipeline-stages", "2", "--pipeline-schedule", "zigzag"}, `"zigzag" unknown (want 1f1b or gpipe)`},
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
