package metrics

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Trainer is the set of Prometheus collectors of one training process (a
// cluster worker, or loom launch training alone), every series labelled
// with the job's name and the worker's id. Its methods are called from the
// step loop and the checkpoint and collective goroutines; they are safe for
// concurrent use and, except SetPlacement when the placement changes,
// allocate nothing.
type Trainer struct {
	steps, samples, tokens prometheus.Counter
	loss, lr, gradNorm     prometheus.Gauge
	stepSeconds            prometheus.Histogram
	phases                 [numPhases]prometheus.Counter

	allReduceBytes   *prometheus.CounterVec
	allReduceSeconds *prometheus.HistogramVec
	// The transports a worker uses, resolved once.
	tcpBytes, shmBytes, tlsBytes       prometheus.Counter
	tcpSeconds, shmSeconds, tlsSeconds prometheus.Observer

	ckptSeconds  prometheus.Histogram
	ckptBytes    prometheus.Gauge
	ckptFailures prometheus.Counter

	generation        prometheus.Gauge
	evalLoss, evalAcc prometheus.Gauge

	info  *prometheus.GaugeVec
	mu    sync.Mutex // guards place
	place *placement // the labels of the info series set; nil: none yet
}

// placement is where the process sits in the job's current plan.
type placement struct {
	rank, stage int
	device      string
}

// The phases of a step, the values of loom_train_phase_seconds_total's
// phase label.
const (
	phaseCompute = iota
	phaseCommunication
	phaseOptimizer
	phaseIdle
	numPhases
)

var phaseNames = [numPhases]string{"compute", "communication", "optimizer", "idle"}

// Histogram buckets: a training step takes 1 ms (a tiny model) to a
// minute (a large one on a CPU); one all-reduce 100 µs to 10 s; a
// checkpoint write 10 ms to 10 min.
var (
	stepBuckets       = prometheus.ExponentialBucketsRange(0.001, 60, 17)
	allReduceBuckets  = prometheus.ExponentialBucketsRange(0.0001, 10, 16)
	checkpointBuckets = prometheus.ExponentialBucketsRange(0.01, 600, 12)
)

// NewTrainer registers the collectors of worker's training of job with reg.
// Several Trainers may share a registry if their worker ids differ.
func NewTrainer(reg prometheus.Registerer, job, worker string) (*Trainer, error) {
	labels := prometheus.Labels{"job": job, "worker": worker}
	var all []prometheus.Collector
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
		all = append(all, c)
		return c
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels})
		all = append(all, g)
		return g
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: labels, Buckets: buckets})
		all = append(all, h)
		return h
	}
	m := &Trainer{
		steps:   counter("loom_train_steps_total", "Optimizer steps this process completed (every rank counts every step)."),
		samples: counter("loom_train_samples_total", "Training samples this process computed gradients on (its share of each global batch)."),
		tokens:  counter("loom_train_tokens_total", "Predicted positions in loom_train_samples_total: samples × context, for language models only."),
		loss:    gauge("loom_train_loss", "Mean training loss of the last step's global batch (per predicted position)."),
		lr:      gauge("loom_train_learning_rate", "Learning rate of the last step's update."),
		gradNorm: gauge("loom_train_grad_norm",
			"Global norm of the last step's mean gradient before clipping (set only with optimizer.clip_norm)."),
		stepSeconds: histogram("loom_train_step_duration_seconds",
			"Wall time of one training step (sampling, forward, backward, gradient sync, update; not evaluation).", stepBuckets),
		ckptSeconds: histogram("loom_checkpoint_write_duration_seconds",
			"Time from starting a checkpoint to its publication on disk.", checkpointBuckets),
		ckptBytes:    gauge("loom_checkpoint_size_bytes", "Size of the last checkpoint written, manifest included."),
		ckptFailures: counter("loom_checkpoint_failures_total", "Checkpoint writes that failed."),
		generation:   gauge("loom_plan_generation", "Plan generation this process last trained in (0: training alone)."),
		evalLoss:     gauge("loom_eval_loss", "Held-out loss per predicted position at the last evaluation."),
		evalAcc:      gauge("loom_eval_accuracy_ratio", "Held-out accuracy (classes, or next tokens) at the last evaluation, 0 to 1."),
	}
	phases := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loom_train_phase_seconds_total",
		Help: "Step wall time by phase: compute (forward and backward), communication (waiting for the other ranks' gradient sums after backward), " +
			"optimizer (the update), idle (the rest: sampling, waiting for a checkpoint copy).", ConstLabels: labels}, []string{"phase"})
	for i, name := range phaseNames {
		m.phases[i] = phases.WithLabelValues(name)
	}
	m.allReduceBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loom_collective_allreduce_bytes_total",
		Help: "Payload bytes this rank sent in all-reduces, by the transport of its link to the next rank.", ConstLabels: labels}, []string{"transport"})
	m.allReduceSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "loom_collective_allreduce_duration_seconds",
		Help: "Wall time of one all-reduce, by the transport of this rank's link to the next rank.", ConstLabels: labels,
		Buckets: allReduceBuckets}, []string{"transport"})
	m.tcpBytes, m.shmBytes = m.allReduceBytes.WithLabelValues("tcp"), m.allReduceBytes.WithLabelValues("shm")
	m.tcpSeconds, m.shmSeconds = m.allReduceSeconds.WithLabelValues("tcp"), m.allReduceSeconds.WithLabelValues("shm")
	m.tlsBytes, m.tlsSeconds = m.allReduceBytes.WithLabelValues("tls"), m.allReduceSeconds.WithLabelValues("tls")
	m.info = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "loom_worker_info",
		Help:        "Always 1: where this process sits in the job's current plan (rank and stage change with the plan generation).",
		ConstLabels: labels}, []string{"rank", "stage", "device"})
	all = append(all, phases, m.allReduceBytes, m.allReduceSeconds, m.info)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: job %s worker %s: %w", job, worker, err)
		}
	}
	return m, nil
}

// Step is one completed training step as this process saw it.
type Step struct {
	// Step is the step's number (from 1), Epoch the epoch its samples came
	// from.
	Step, Epoch int
	// Samples is the samples this process computed on, Batch those of the
	// whole step (every rank); TokensPerSample the positions a sample
	// predicts (the context of a language model; 1 for a classifier).
	Samples, Batch, TokensPerSample int
	// Loss is the mean loss of the global batch, LR the update's learning
	// rate, GradNorm the pre-clipping gradient norm (0: not computed).
	Loss, LR, GradNorm float64
	// Took is the step's wall time; Compute, Communication and Optimizer
	// are the parts of it spent in forward and backward, waiting for the
	// gradient sums after backward, and in the update. The rest is idle.
	Took, Compute, Communication, Optimizer time.Duration
	// Evaluated is set when the step ended with an evaluation on the
	// held-out data, which found EvalLoss and EvalAccuracy.
	Evaluated              bool
	EvalLoss, EvalAccuracy float64
}

// ObserveStep records one completed step (and its evaluation).
func (m *Trainer) ObserveStep(s Step) {
	m.steps.Inc()
	m.samples.Add(float64(s.Samples))
	if s.TokensPerSample > 1 {
		m.tokens.Add(float64(s.Samples * s.TokensPerSample))
	}
	m.loss.Set(s.Loss)
	m.lr.Set(s.LR)
	if s.GradNorm > 0 {
		m.gradNorm.Set(s.GradNorm)
	}
	m.stepSeconds.Observe(s.Took.Seconds())
	m.phases[phaseCompute].Add(s.Compute.Seconds())
	m.phases[phaseCommunication].Add(s.Communication.Seconds())
	m.phases[phaseOptimizer].Add(s.Optimizer.Seconds())
	m.phases[phaseIdle].Add(max(0, s.Took-s.Compute-s.Communication-s.Optimizer).Seconds())
	if s.Evaluated {
		m.ObserveEval(s.EvalLoss, s.EvalAccuracy)
	}
}

// ObserveEval records an evaluation on the held-out data.
func (m *Trainer) ObserveEval(loss, accuracy float64) {
	m.evalLoss.Set(loss)
	m.evalAcc.Set(accuracy)
}

// ObserveAllReduce records one all-reduce that sent bytes payload bytes
// over transport ("tcp", "tls" or "shm") in took; it implements
// collective.Observer (the rate is not recorded here: the worker reports
// it as its link rate).
func (m *Trainer) ObserveAllReduce(transport string, bytes int64, took time.Duration, _ float64) {
	switch transport {
	case "tcp":
		m.tcpBytes.Add(float64(bytes))
		m.tcpSeconds.Observe(took.Seconds())
	case "shm":
		m.shmBytes.Add(float64(bytes))
		m.shmSeconds.Observe(took.Seconds())
	case "tls":
		m.tlsBytes.Add(float64(bytes))
		m.tlsSeconds.Observe(took.Seconds())
	default:
		m.allReduceBytes.WithLabelValues(transport).Add(float64(bytes))
		m.allReduceSeconds.WithLabelValues(transport).Observe(took.Seconds())
	}
}

// CheckpointWritten records a published checkpoint of bytes that took took
// from its start; it implements train.CheckpointObserver.
func (m *Trainer) CheckpointWritten(took time.Duration, bytes int64) {
	m.ckptSeconds.Observe(took.Seconds())
	m.ckptBytes.Set(float64(bytes))
}

// CheckpointFailed records a failed checkpoint write; it implements
// train.CheckpointObserver.
func (m *Trainer) CheckpointFailed() { m.ckptFailures.Inc() }

// SetPlacement records the plan generation the process trains in and its
// rank, pipeline stage and device there: loom_worker_info's series moves to
// the new labels (the old one is deleted) when they change.
func (m *Trainer) SetPlacement(generation int64, rank, stage int, device string) {
	m.generation.Set(float64(generation))
	m.mu.Lock()
	defer m.mu.Unlock()
	p := placement{rank: rank, stage: stage, device: device}
	if m.place != nil {
		if *m.place == p {
			return
		}
		m.info.DeleteLabelValues(m.place.labels()...)
	}
	m.place = &p
	m.info.WithLabelValues(p.labels()...).Set(1)
}

func (p placement) labels() []string {
	return []string{strconv.Itoa(p.rank), strconv.Itoa(p.stage), p.device}
}
