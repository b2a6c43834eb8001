package web

import (
	"go.yaml.in/yaml/v3"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/plots"
)

// lossChart is the training loss by step, with the held-out evaluations.
func lossChart(h *api.JobHistory) plots.Chart {
	var train, eval []plots.Point
	for _, p := range h.GetPoints() {
		train = append(train, plots.Point{X: float64(p.GetStep()), Y: p.GetLoss()})
	}
	for _, e := range h.GetEvals() {
		if e.GetLoss() > 0 {
			eval = append(eval, plots.Point{X: float64(e.GetStep()), Y: e.GetLoss()})
		}
	}
	return plots.LossChart(train, eval, plotPoints)
}

// speedChart is the job's throughput (the sum over its ranks) over time:
// tokens/s for a language model (tokensPerSample > 1), else samples/s.
func speedChart(h *api.JobHistory, tokensPerSample int) plots.Chart {
	unit, scale := "samples/s", 1.0
	if tokensPerSample > 1 {
		unit, scale = "tokens/s", float64(tokensPerSample)
	}
	var pts []plots.Point
	for _, p := range h.GetPoints() {
		if p.GetSamplesPerSecond() > 0 {
			pts = append(pts, plots.Point{X: float64(p.GetUnixNano()) / 1e9, Y: scale * p.GetSamplesPerSecond()})
		}
	}
	c := plots.ThroughputChart(unit, pts, plotPoints)
	c.Title, c.XLabel, c.XIsTime = "Job throughput", "time", true
	return c
}

// tokensPerSample is the positions one sample of the job predicts: a GPT's
// context, read from the job's config; 1 for anything else.
func tokensPerSample(j *api.Job) int {
	var cfg struct {
		Model struct {
			Kind    string `yaml:"kind"`
			Context int    `yaml:"context"`
		} `yaml:"model"`
	}
	if yaml.Unmarshal(j.GetSpec().GetConfigYaml(), &cfg) == nil && cfg.Model.Kind == "gpt" && cfg.Model.Context > 1 {
		return cfg.Model.Context
	}
	return 1
}

// workersChart is each worker's measured samples/s over time, one line per
// worker in order of first appearance.
func workersChart(h *api.JobHistory) plots.Chart {
	byWorker := map[string][]plots.Point{}
	var order []string
	for _, p := range h.GetWorkerSpeeds() {
		id := p.GetWorkerId()
		if _, ok := byWorker[id]; !ok {
			order = append(order, id)
		}
		byWorker[id] = append(byWorker[id], plots.Point{X: float64(p.GetUnixNano()) / 1e9, Y: p.GetSamplesPerSecond()})
	}
	c := plots.Chart{Title: "Worker throughput", XLabel: "time", YLabel: "samples/s", XIsTime: true}
	for _, id := range order {
		c.Lines = append(c.Lines, plots.Line{Name: id, Points: plots.Downsample(byWorker[id], plotPoints)})
	}
	return c
}
