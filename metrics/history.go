package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// HistoryFile is the name of a job's per-step metrics history, written next
// to the job's step-NNNNNNNN checkpoint directories.
const HistoryFile = "metrics.jsonl"

// HistoryPath is the metrics history of job under checkpointDir: in the
// job's directory, beside its step-NNNNNNNN checkpoints.
func HistoryPath(checkpointDir, job string) string {
	return filepath.Join(checkpointDir, job, HistoryFile)
}

// Record is one line of a metrics history: the state of training after one
// completed step. Optional fields are omitted from the file when zero.
type Record struct {
	T           int64   `json:"t"` // wall clock, Unix nanoseconds
	Step        int     `json:"step"`
	Epoch       int     `json:"epoch"`
	Loss        float64 `json:"loss"`
	LR          float64 `json:"lr,omitempty"`
	GradNorm    float64 `json:"grad_norm,omitempty"`
	SamplesPerS float64 `json:"samples_per_s,omitempty"`
	TokensPerS  float64 `json:"tokens_per_s,omitempty"`
	Worker      string  `json:"worker,omitempty"`       // cluster jobs only
	Generation  int     `json:"generation,omitempty"`   // cluster jobs only
	ValLoss     float64 `json:"val_loss,omitempty"`     // steps where an evaluation ran
	ValAccuracy float64 `json:"val_accuracy,omitempty"` // steps where an evaluation ran
}

// RecordOf is the history line of s, completed at t. Its throughput is the
// step's: the global batch over the step's wall time. Cluster jobs add
// Worker and Generation.
func RecordOf(s Step, t time.Time) Record {
	r := Record{T: t.UnixNano(), Step: s.Step, Epoch: s.Epoch, Loss: s.Loss, LR: s.LR, GradNorm: s.GradNorm}
	if s.Took > 0 {
		r.SamplesPerS = float64(s.Batch) / s.Took.Seconds()
		if s.TokensPerSample > 1 {
			r.TokensPerS = r.SamplesPerS * float64(s.TokensPerSample)
		}
	}
	if s.Evaluated {
		r.ValLoss, r.ValAccuracy = s.EvalLoss, s.EvalAccuracy
	}
	return r
}

// ErrNoHistory is returned (wrapped) by ReadHistory when there is no
// history file, or it holds no records.
var ErrNoHistory = errors.New("no metrics history")

// ReadHistory reads a job's metrics history. path is the metrics.jsonl file
// itself, the job directory holding it, or one of the job's step-NNNNNNNN
// checkpoint directories (the history is then ../metrics.jsonl). A resumed
// run appends steps it already logged, so the last line for each step wins;
// the result is sorted by step. Lines that are not records (torn by a
// crash mid-write) are skipped.
func ReadHistory(path string) ([]Record, error) {
	file, err := historyPath(path)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	byStep := map[int]Record{}
	torn := 0
	for line := range bytes.Lines(b) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			torn++
			continue
		}
		byStep[r.Step] = r
	}
	if len(byStep) == 0 {
		return nil, fmt.Errorf("%s: %w: the file holds no records (%d lines that are not JSON records)", file, ErrNoHistory, torn)
	}
	out := make([]Record, 0, len(byStep))
	for _, r := range byStep {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int { return a.Step - b.Step })
	return out, nil
}

// historyPath resolves ReadHistory's argument to the history file.
func historyPath(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: %w (no such file or directory)", path, ErrNoHistory)
		}
		return "", err
	}
	if !fi.IsDir() {
		return path, nil
	}
	candidates := []string{filepath.Join(path, HistoryFile)}
	if isStepDir(filepath.Base(filepath.Clean(path))) {
		candidates = append(candidates, filepath.Join(path, "..", HistoryFile))
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return filepath.Clean(c), nil
		}
	}
	return "", fmt.Errorf("%s: %w: want %s, a job directory holding it, or a step-NNNNNNNN checkpoint directory of that job",
		path, ErrNoHistory, HistoryFile)
}

// isStepDir reports whether name is a published checkpoint directory name
// ("step-00000050").
func isStepDir(name string) bool {
	digits, ok := strings.CutPrefix(name, "step-")
	if !ok || len(digits) < 8 {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
