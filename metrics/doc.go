// Package metrics exposes a training process to Prometheus and records its
// per-step history.
//
// Serve runs the /metrics endpoint for any registry (workers, the
// single-process trainer and the coordinator all use it). Trainer is the set
// of collectors of one training process; Phases splits a step's wall time
// into compute, communication, optimizer and idle. HistoryWriter appends one
// Record per completed step to <checkpoint dir>/<job>/metrics.jsonl and
// ReadHistory reads it back for plotting.
package metrics
