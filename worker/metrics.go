package worker

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/metrics"
	"github.com/loomtrain/loom/train"
)

// stepMetrics publishes the agent's training: to its Prometheus collectors
// (prom; nil without AgentConfig.Metrics) and, while the worker is the rank
// 0 of its generation, to the job's metrics history beside its checkpoints
// (history; nil with checkpointing disabled). Called from the step loop.
type stepMetrics struct {
	prom    *metrics.Trainer
	history *metrics.HistoryWriter
	worker  string
	device  string
	tokens  int            // predicted positions per sample
	last    metrics.Record // the newest history line written (Step 0: none)
	link    linkMeter      // this worker's link rate, from its all-reduces
}

// newStepMetrics registers the worker's collectors with reg (nil: none)
// and opens job's history.
func newStepMetrics(reg prometheus.Registerer, job *jobspec.Job, id, device string, tokensPerSample int, log *zap.Logger) (*stepMetrics, error) {
	m := &stepMetrics{worker: id, device: device, tokens: tokensPerSample}
	if reg != nil {
		var err error
		if m.prom, err = metrics.NewTrainer(reg, job.Name, id); err != nil {
			return nil, err
		}
	}
	if !job.Checkpoint.Disabled {
		m.history = metrics.NewHistoryWriter(metrics.HistoryPath(job.Checkpoint.Dir, job.Name), log)
	}
	return m, nil
}

// collectiveObserver is what the generation's communicator reports its
// all-reduces to: the link meter, then the metrics if any.
func (m *stepMetrics) collectiveObserver() collective.Observer {
	o := linkObserver{meter: &m.link}
	if m.prom != nil {
		o.next = m.prom
	}
	return o
}

// checkpointObserver is what the checkpointer reports its writes to (nil:
// nothing).
func (m *stepMetrics) checkpointObserver() train.CheckpointObserver {
	if m.prom == nil {
		return nil
	}
	return m.prom
}

// joined records the worker's place in a generation it starts training in.
func (m *stepMetrics) joined(g *generation) {
	if m.prom != nil {
		m.prom.SetPlacement(g.plan.GetGeneration(), g.rank, g.stage(), m.device)
	}
}

// step records a step completed in generation g.
func (m *stepMetrics) step(g *generation, r train.StepResult) {
	s := metrics.Step{Step: r.Step, Epoch: r.Epoch, Samples: r.Rows, Batch: r.Batch, TokensPerSample: m.tokens,
		Loss: r.Loss, LR: float64(r.LR), GradNorm: r.GradNorm,
		Took: r.Took, Compute: r.Compute, Communication: r.Wait, Optimizer: r.Update,
		Evaluated: !math.IsNaN(r.TestAccuracy), EvalLoss: r.TestLoss, EvalAccuracy: r.TestAccuracy}
	if m.prom != nil {
		m.prom.ObserveStep(s)
	}
	if m.history != nil && g.rank == 0 {
		m.last = metrics.RecordOf(s, time.Now())
		m.last.Worker, m.last.Generation = m.worker, int(g.plan.GetGeneration())
		m.history.Write(m.last)
	}
}

// finalEvaluation records the evaluation rank 0 runs after the job's last
// step: in the gauges, and as a second history line for that step (a
// reader keeps the last line of a step).
func (m *stepMetrics) finalEvaluation(loss, acc float64) {
	if m.prom != nil {
		m.prom.ObserveEval(loss, acc)
	}
	if m.history != nil && m.last.Step > 0 {
		m.last.T, m.last.ValLoss, m.last.ValAccuracy = time.Now().UnixNano(), loss, acc
		m.history.Write(m.last)
	}
}

// close writes out the history.
func (m *stepMetrics) close() {
	if m.history != nil {
		_ = m.history.Close()
	}
}

// linkRate is the link meter's rate in bytes/s (0: none measured).
func (m *stepMetrics) linkRate() float64 {
	if m == nil {
		return 0
	}
	return m.link.rate()
}
