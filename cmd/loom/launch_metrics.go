package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/metrics"
	"github.com/loomtrain/loom/train"
)

// localMetrics publishes a single-process launch's steps: to Prometheus at
// --metrics-addr (prom; nil without it), and as the metrics history, to
// CHECKPOINT_DIR/JOB/metrics.jsonl (unless checkpoint.disabled) and to the
// --metrics file. Called from the step loop (Run's onProgress).
type localMetrics struct {
	prom      *metrics.Trainer
	histories []*metrics.HistoryWriter
	last      metrics.Record // the newest history line (Step 0: none)
}

// localWorker is the worker label of a single-process launch's series.
const localWorker = "local"

// openLocalMetrics starts serving Prometheus metrics (addr empty: not) and
// opens the histories; file, if set, is replaced. The server stops when ctx
// ends.
func openLocalMetrics(ctx context.Context, job *jobspec.Job, addr, file, device string, log *zap.Logger) (*localMetrics, error) {
	m := &localMetrics{}
	if addr != "" {
		reg := metrics.NewRegistry()
		var err error
		if m.prom, err = metrics.NewTrainer(reg, job.Name, localWorker); err != nil {
			return nil, err
		}
		m.prom.SetPlacement(0, 0, 0, device)
		if _, err := metrics.Serve(ctx, addr, "--metrics-addr", reg, log); err != nil {
			return nil, err
		}
	}
	if !job.Checkpoint.Disabled {
		m.histories = append(m.histories, metrics.NewHistoryWriter(metrics.HistoryPath(job.Checkpoint.Dir, job.Name), log))
	}
	if file != "" {
		f, err := os.Create(file)
		if err != nil {
			return nil, fmt.Errorf("--metrics: %w", err)
		}
		f.Close()
		m.histories = append(m.histories, metrics.NewHistoryWriter(file, log))
	}
	return m, nil
}

// checkpointObserver is what the checkpointer reports its writes to (nil:
// nothing).
func (m *localMetrics) checkpointObserver() train.CheckpointObserver {
	if m.prom == nil {
		return nil
	}
	return m.prom
}

// step records a completed step.
func (m *localMetrics) step(p train.Progress) {
	s := metrics.Step{Step: p.Step, Epoch: p.Epoch, Samples: p.Batch, Batch: p.Batch, TokensPerSample: p.TokensPerSample,
		Loss: p.Loss, LR: float64(p.LR), GradNorm: p.GradNorm,
		Took: p.Took, Compute: p.Compute, Communication: p.Wait, Optimizer: p.Update,
		Evaluated: !math.IsNaN(p.TestAccuracy), EvalLoss: p.TestLoss, EvalAccuracy: p.TestAccuracy}
	if m.prom != nil {
		m.prom.ObserveStep(s)
	}
	m.last = metrics.RecordOf(s, time.Now())
	for _, h := range m.histories {
		h.Write(m.last)
	}
}

// finalEvaluation records the evaluation at the end of the run: in the
// gauges, and as a second history line for the last step (a reader keeps
// the last line of a step).
func (m *localMetrics) finalEvaluation(loss, acc float64) {
	if m.prom != nil {
		m.prom.ObserveEval(loss, acc)
	}
	if m.last.Step == 0 {
		return
	}
	m.last.T, m.last.ValLoss, m.last.ValAccuracy = time.Now().UnixNano(), loss, acc
	for _, h := range m.histories {
		h.Write(m.last)
	}
}

// close writes out the histories.
func (m *localMetrics) close() {
	for _, h := range m.histories {
		_ = h.Close()
	}
}

// workerMetricsAddr is the --metrics-addr of local worker i of a launch
// given addr: port+i, so that workers on one host do not collide (port 0:
// each picks its own). addr empty: "".
func workerMetricsAddr(addr string, i int) (string, error) {
	if addr == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p+i > 65535 {
		return "", fmt.Errorf("--metrics-addr %s: want host:port with a port of 0 to %d", addr, 65535-i)
	}
	if p == 0 {
		return addr, nil
	}
	return net.JoinHostPort(host, strconv.Itoa(p+i)), nil
}
