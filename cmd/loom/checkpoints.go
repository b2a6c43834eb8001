package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/train"
)

func newCheckpointsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoints", Short: "Inspect a job's checkpoints"}
	var dir, coord string
	var asJSON bool
	var tls tlsFiles
	list := &cobra.Command{
		Use:   "list JOB",
		Short: "List the published checkpoints of job JOB (by name), oldest first",
		Long: `List the published checkpoints of a job: step, epoch, world size at save,
precision, size and age. A checkpoint whose manifest cannot be read is listed
with its problem. With --coordinator, a column says which ones the
coordinator recorded (only recorded checkpoints are resumed from a cluster).
Tensor checksums are verified by resume and eval, not by list.`,
		Example: `  loom checkpoints list mnist-mlp
  loom checkpoints list mnist-mlp --dir /shared/ckpt --coordinator 10.0.0.5:7070`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return listCheckpoints(cmd.Context(), cmd.OutOrStdout(), dir, args[0], coord, tls, asJSON)
		},
	}
	list.Flags().StringVar(&dir, "dir", "checkpoints", "checkpoint root directory (the job config's checkpoint.dir)")
	list.Flags().StringVar(&coord, "coordinator", "", "coordinator address(es): mark the checkpoints it recorded")
	list.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	tls.flags(list)
	cmd.AddCommand(list)
	return cmd
}

func listCheckpoints(ctx context.Context, out io.Writer, dir, job, coord string, tls tlsFiles, asJSON bool) error {
	if err := isDir("--dir", dir); err != nil {
		return err
	}
	store, err := checkpoint.NewLocalStorage(dir)
	if err != nil {
		return err
	}
	infos, err := checkpoint.List(ctx, store, job)
	if err != nil {
		return err
	}
	recorded := map[string]bool{}
	if coord != "" {
		conn, err := tls.dial(strings.Split(coord, ","))
		if err != nil {
			return err
		}
		defer conn.Close()
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := api.NewCoordinatorClient(conn).ListJobs(lctx, &api.ListJobsRequest{})
		if err != nil {
			return fmt.Errorf("coordinator: %w", explainTLS(err))
		}
		for _, j := range resp.GetJobs() {
			if j.GetSpec().GetName() == job {
				for _, c := range j.GetCheckpoints() {
					recorded[c.GetPath()] = true
				}
			}
		}
	}
	if asJSON {
		b, _ := json.MarshalIndent(infos, "", "  ")
		fmt.Fprintln(out, string(b))
		return nil
	}
	if len(infos) == 0 {
		fmt.Fprintf(out, "no checkpoints of %q under %s\n", job, dir)
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	head := "STEP\tEPOCH\tWORLD\tPRECISION\tSIZE\tCREATED\tPATH"
	if coord != "" {
		head += "\tRECORDED"
	}
	fmt.Fprintln(w, head)
	for _, i := range infos {
		if i.Problem != "" {
			fmt.Fprintf(w, "%d\t-\t-\t-\t-\t-\t%s\tINVALID: %s\n", i.Step, i.Path, i.Problem)
			continue
		}
		line := fmt.Sprintf("%d\t%d\t%d\t%s\t%.1f MB\t%s\t%s", i.Step, i.Epoch, i.WorldSize, i.Precision, float64(i.Bytes)/1e6,
			i.Created.Local().Format("2006-01-02 15:04:05"), filepath.Join(dir, filepath.FromSlash(i.Path)))
		if coord != "" {
			line += fmt.Sprintf("\t%v", recorded[i.Path])
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

func newEvalCmd() *cobra.Command {
	var configPath, dev string
	var asJSON bool
	var maxTokens int
	cmd := &cobra.Command{
		Use:   "eval CHECKPOINT_DIR",
		Short: "Held-out accuracy and loss (perplexity for a GPT) of a checkpoint",
		Long: `Load a checkpoint (verifying every tensor's checksum) and report the model's
quality on held-out data: for a classifier, accuracy and mean loss on the
dataset's test split; for a GPT, the loss per token, perplexity and next-token
accuracy over every validation window of its text.

Only the weights are read. The model and its data come from the job config
the checkpoint stores; --config gives another one (e.g. data that moved), and
is refused if its model differs from the checkpoint's. --max-tokens bounds a
GPT's evaluation to that many tokens, in validation windows spread evenly
over the split.`,
		Example: `  loom eval checkpoints/mnist-mlp/step-00000705
  loom eval checkpoints/gpt-tiny/step-00000400 --json
  loom eval checkpoints/gpt-gosrc/step-00000300 --max-tokens 131072
  loom eval checkpoints/mnist-mlp/step-00000705 --config examples/mnist-mlp.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxTokens < 0 {
				return fmt.Errorf("--max-tokens must be >= 0, got %d", maxTokens)
			}
			return runEval(cmd.Context(), cmd.OutOrStdout(), args[0], configPath, dev, maxTokens, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "job config the checkpoint was trained with")
	f.StringVar(&dev, "device", "cpu", "device spec")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.IntVar(&maxTokens, "max-tokens", 0, "GPT: evaluate at most this many validation tokens, in whole windows (0: all)")
	return cmd
}

func runEval(ctx context.Context, out io.Writer, dir, configPath, devSpec string, maxTokens int, asJSON bool) error {
	if err := isDir("checkpoint", dir); err != nil {
		return err
	}
	st, err := checkpoint.LoadDir(ctx, dir)
	if err != nil {
		return err
	}
	var job, stored *jobspec.Job
	if st.Config != "" {
		if stored, err = jobspec.Parse(filepath.Join(dir, "manifest.json")+" (its config)", []byte(st.Config)); err != nil {
			return fmt.Errorf("%w (pass --config to evaluate with another config)", err)
		}
	}
	switch {
	case configPath != "":
		if job, err = jobspec.Load(configPath); err != nil {
			return err
		}
		if stored != nil && !reflect.DeepEqual(job.Model, stored.Model) {
			return fmt.Errorf("%s: its model %s differs from the checkpoint's %s (%s)", configPath, modelString(job.Model), modelString(stored.Model), dir)
		}
	case stored != nil:
		job = stored
	default:
		return fmt.Errorf("%s stores no job config (an older loom wrote it): pass --config with the job's config", dir)
	}
	job.Name = st.Job
	job.Model.Init = "" // the checkpoint's weights replace the initial ones
	d, err := openDevice("--device", devSpec)
	if err != nil {
		return err
	}
	split, err := train.OpenData(job)
	if err != nil {
		return err
	}
	tr, err := train.NewTrainer(job, d, split, newLogger(zapcore.WarnLevel))
	if err != nil {
		return err
	}
	if err := tr.LoadWeights(st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	limit := 0
	if maxTokens > 0 && split.Text != nil {
		limit = max(1, maxTokens/job.Model.Context)
	}
	start := time.Now()
	acc, loss, n := tr.EvaluateN(limit)
	took := time.Since(start).Seconds()
	if split.Text != nil {
		// A language model: loss per token on the held-out windows, and its
		// perplexity.
		tokens := n * job.Model.Context
		rate := float64(tokens) / took
		if asJSON {
			b, _ := json.Marshal(map[string]any{"checkpoint": dir, "job": st.Job, "step": st.Step, "validation_loss": loss,
				"perplexity": math.Exp(loss), "next_token_accuracy": acc, "validation_windows": n, "validation_tokens": tokens,
				"of_windows": split.Text.Validation.N, "tokens_per_s": rate})
			fmt.Fprintln(out, string(b))
			return nil
		}
		fmt.Fprintf(out, "%s (job %s, step %d): validation loss %.4f, perplexity %.2f, next-token accuracy %.2f%% over %d of %d windows (%d tokens, %.0f tokens/s)\n",
			dir, st.Job, st.Step, loss, math.Exp(loss), 100*acc, n, split.Text.Validation.N, tokens, rate)
		return nil
	}
	if asJSON {
		b, _ := json.Marshal(map[string]any{"checkpoint": dir, "job": st.Job, "step": st.Step, "test_accuracy": acc, "test_loss": loss, "test_examples": n})
		fmt.Fprintln(out, string(b))
		return nil
	}
	fmt.Fprintf(out, "%s (job %s, step %d): test accuracy %.2f%%, loss %.4f over %d examples\n", dir, st.Job, st.Step, 100*acc, loss, n)
	return nil
}

// modelString describes m in one line.
func modelString(m jobspec.Model) string {
	if m.Kind == "gpt" {
		return fmt.Sprintf("{kind: gpt, layers: %d, heads: %d, d_model: %d, context: %d, vocab: %d, tie_embeddings: %v}",
			m.Layers.Count(), m.Heads, m.DModel, m.Context, m.Vocab, m.TieEmbeddings)
	}
	return fmt.Sprintf("{kind: %s, layers: %v, activation: %s}", m.Kind, []int(m.Layers), m.Activation)
}

// isDir checks that dir exists and is a directory, so that read-only
// commands report a typo instead of creating the directory.
func isDir(what, dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s %s: not a directory", what, dir)
	}
	return nil
}
