package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/train"
)

// trainBenchResult is one line of `loom bench train --json`: the training
// step of one job config on one worker at one thread count.
type trainBenchResult struct {
	Impl      string  `json:"impl"` // "loom"
	Config    string  `json:"config"`
	Mode      string  `json:"mode"` // precision
	Threads   int     `json:"threads"`
	Device    string  `json:"device"`
	Steps     int     `json:"steps"`
	StepMs    float64 `json:"step_ms"` // median
	StepMsMin float64 `json:"step_ms_min"`
	StepMsMax float64 `json:"step_ms_max"`
	// TokensPerSec is set for language models, SamplesPerSec always.
	TokensPerSec  float64 `json:"tokens_per_s,omitempty"`
	SamplesPerSec float64 `json:"samples_per_s"`
	Params        int     `json:"params"`
	// ModelGFLOPs is the step's model FLOP/s (6·params + attention per
	// token, as nanoGPT's estimate_mfu counts it) and GemmPeakGFLOPs the
	// same device's GEMM rate on a 1024³ product in the step's precision,
	// measured in the same process: their ratio is how close the step
	// runs to the machine's limit.
	ModelGFLOPs    float64 `json:"model_gflops"`
	GemmPeakGFLOPs float64 `json:"gemm_peak_gflops"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"` // of the process that ran this thread count
}

func newBenchTrainCmd() *cobra.Command {
	var (
		threads []int
		steps   int
		warmup  int
		asJSON  bool
		child   bool
		prec    string
	)
	cmd := &cobra.Command{
		Use:   "train CONFIG",
		Short: "Time the training step of a job config on one worker",
		Long: `Time the training step (forward, loss, backward, optimizer update) of
CONFIG's model on one CPU worker, once per thread count, each in a fresh
process so that its peak RSS is its own. Prints tokens/s (language models)
or samples/s, the median step time, the model FLOP/s beside the device's own
GEMM peak measured in the same process, and the peak RSS.

examples/gpt-bench.yaml is the configuration of the PyTorch anchor
scripts/gpt_step.py runs (VOCAB=256): compare the two in one run with
scripts/compare_gpt.sh.`,
		Example: `  loom bench train examples/gpt-bench.yaml --threads 1,2 --steps 20
  loom bench train examples/gpt-bench.yaml --precision bf16 --json
  loom bench train examples/mnist-mlp.yaml --threads 1 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if steps < 1 || warmup < 0 {
				return fmt.Errorf("--steps must be >= 1 and --warmup >= 0")
			}
			for _, th := range threads {
				if th < 1 {
					return fmt.Errorf("--threads %d: must be >= 1", th)
				}
			}
			job, err := jobspec.Load(args[0])
			if err != nil {
				return err
			}
			if prec != "" {
				job.Train.Precision = prec
				if err := job.Validate(); err != nil {
					return fmt.Errorf("--precision: %w", err)
				}
			}
			if child {
				r, err := benchTrainOnce(args[0], job, threads[0], steps, warmup)
				if err != nil {
					return err
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
			}
			return runBenchTrain(cmd.OutOrStdout(), args[0], job.Train.Precision, threads, steps, warmup, asJSON)
		},
	}
	cmd.Flags().IntSliceVar(&threads, "threads", []int{1, 2}, "thread counts to measure")
	cmd.Flags().IntVar(&steps, "steps", 20, "timed steps per thread count")
	cmd.Flags().IntVar(&warmup, "warmup", 3, "untimed steps first (buffers, caches)")
	cmd.Flags().StringVar(&prec, "precision", "", "override train.precision: fp32, bf16 or fp16")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON line per thread count")
	cmd.Flags().BoolVar(&child, "child", false, "run one thread count in this process (internal)")
	_ = cmd.Flags().MarkHidden("child")
	return cmd
}

// runBenchTrain runs each thread count in a child process of this binary
// and reports its result with the child's peak RSS.
func runBenchTrain(out io.Writer, config, precision string, threads []int, steps, warmup int, asJSON bool) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	const row = "%-22s %-5s %7s %10s %9s %12s %9s %9s %9s\n"
	if !asJSON {
		fmt.Fprintf(out, row, "device", "mode", "threads", "step ms", "tokens/s", "samples/s", "model GF", "GEMM GF", "RSS MiB")
	}
	for _, th := range threads {
		var stdout, stderr bytes.Buffer
		c := exec.Command(self, "bench", "train", config, "--child", "--threads", strconv.Itoa(th),
			"--steps", strconv.Itoa(steps), "--warmup", strconv.Itoa(warmup), "--precision", precision)
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Run(); err != nil {
			return fmt.Errorf("threads %d: %w: %s", th, err, bytes.TrimSpace(stderr.Bytes()))
		}
		var r trainBenchResult
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			return fmt.Errorf("threads %d: reading the result: %w", th, err)
		}
		if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.PeakRSSMiB = float64(ru.Maxrss) / 1024 // Linux: KiB
		}
		if asJSON {
			if err := json.NewEncoder(out).Encode(r); err != nil {
				return err
			}
			continue
		}
		tps := "-"
		if r.TokensPerSec > 0 {
			tps = fmt.Sprintf("%.0f", r.TokensPerSec)
		}
		fmt.Fprintf(out, row, r.Device, r.Mode, strconv.Itoa(r.Threads), fmt.Sprintf("%.1f", r.StepMs), tps,
			fmt.Sprintf("%.1f", r.SamplesPerSec), fmt.Sprintf("%.1f", r.ModelGFLOPs), fmt.Sprintf("%.1f", r.GemmPeakGFLOPs),
			fmt.Sprintf("%.0f", r.PeakRSSMiB))
	}
	return nil
}

// benchTrainOnce builds job's trainer on a CPU device with th threads and
// times steps steps after warmup.
func benchTrainOnce(config string, job *jobspec.Job, th, steps, warmup int) (*trainBenchResult, error) {
	dev, err := cpu.New(cpu.Config{Threads: th})
	if err != nil {
		return nil, err
	}
	split, err := train.OpenData(job)
	if err != nil {
		return nil, fmt.Errorf("%s: data: %w", config, err)
	}
	tr, err := train.NewTrainer(job, dev, split, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config, err)
	}
	for range warmup {
		tr.Step()
	}
	ms := make([]float64, steps)
	for i := range ms {
		t0 := time.Now()
		tr.Step()
		ms[i] = float64(time.Since(t0).Microseconds()) / 1e3
	}
	slices.Sort(ms)
	med := ms[len(ms)/2]
	// matmul counts the parameters a token multiplies with: not the
	// position table, and not the token table unless it is the tied head.
	params, matmul := 0, 0
	for _, p := range tr.Params() {
		params += len(p.Value)
		if p.Name == "transformer.wpe.weight" || (p.Name == "transformer.wte.weight" && !job.Model.TieEmbeddings) {
			continue
		}
		matmul += len(p.Value)
	}
	r := &trainBenchResult{Impl: "loom", Config: config, Mode: job.Train.Precision, Threads: th, Device: dev.Name(), Steps: steps,
		StepMs: med, StepMsMin: ms[0], StepMsMax: ms[len(ms)-1], Params: params}
	batch := float64(job.Train.GlobalBatch)
	r.SamplesPerSec = batch / (med / 1e3)
	flopPerSample := 6 * float64(matmul)
	if job.Model.Kind == "gpt" {
		m := job.Model
		T := float64(m.Context)
		r.TokensPerSec = r.SamplesPerSec * T
		// Per token: 6 per multiplied parameter, and the attention's
		// 12·L·T·C (nanoGPT's count: forward 4·T·C per layer for QKᵀ and
		// PV, backward twice that; no discount for the causal mask).
		flopPerSample = T * (6*float64(matmul) + 12*float64(m.GPTLayers())*T*float64(m.DModel))
	}
	r.ModelGFLOPs = flopPerSample * r.SamplesPerSec / 1e9
	r.GemmPeakGFLOPs, _, _, _ = timeGemm(dev, job.DType(), gemmShape{m: 1024, n: 1024, k: 1024}, 3, 300*time.Millisecond)
	return r, nil
}
