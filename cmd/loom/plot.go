package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/plots"
	"github.com/loomtrain/loom/metrics"
)

// plotKinds are the charts `loom plot` draws, in the order --what all
// writes them.
var plotKinds = []string{"loss", "throughput", "lr"}

type plotOpts struct {
	out, what     string
	width, height int
	logY          bool
	coordinator   string
	tls           tlsFiles
}

func newPlotCmd() *cobra.Command {
	var o plotOpts
	cmd := &cobra.Command{
		Use:   "plot SOURCE --out FILE",
		Short: "Chart a job's loss, throughput or learning rate from its metrics history",
		Long: `Chart the per-step metrics history of a training run. SOURCE is the
job's checkpoint directory (<checkpoint.dir>/<job>), one of its
step-NNNNNNNN checkpoint directories, or the metrics.jsonl file itself; the
history is written there by training runs with checkpoints enabled.
With --coordinator, SOURCE is a job id and the chart comes from the
history the coordinators keep (a point per progress report that advanced
the job, workers report a few times a second, at most 2048 points per job,
evenly thinned; no learning rate).

--what picks the chart:
  loss        train loss vs step, and the validation loss where evaluations ran
  throughput  tokens/s vs step for a language model, samples/s otherwise
  lr          learning rate vs step
  all         the three, written to FILE with -loss, -throughput and -lr
              inserted before the extension

The format follows FILE's extension: .svg or .png. Long histories are
reduced to the lowest and highest point of each pixel column, so spikes
and the noise band stay visible.`,
		Example: `  loom plot checkpoints/mnist-mlp --out loss.png
  loom plot checkpoints/gpt-gosrc/step-00000600 --what throughput --out tps.svg
  loom plot checkpoints/gpt-gosrc/metrics.jsonl --what all --out gpt.png --width 1280 --height 720
  loom plot job-0003 --coordinator 10.0.0.5:7070 --out loss.svg`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPlot(cmd.Context(), cmd.OutOrStdout(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.out, "out", "o", "", "file to write: .svg or .png (required)")
	f.StringVar(&o.what, "what", "loss", "chart: loss, throughput, lr or all")
	f.IntVar(&o.width, "width", 960, "width in pixels")
	f.IntVar(&o.height, "height", 540, "height in pixels")
	f.BoolVar(&o.logY, "log-y", false, "log-scale Y axis (points <= 0 are then left out)")
	f.StringVar(&o.coordinator, "coordinator", "", "read job SOURCE's history from these coordinators (comma-separated gRPC addresses)")
	o.tls.flags(cmd)
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// runPlot checks every option before reading source, then writes one file
// per chart and a line per file to out.
func runPlot(ctx context.Context, out io.Writer, source string, o plotOpts) error {
	kinds := plotKinds
	if o.what != "all" {
		if !slices.Contains(plotKinds, o.what) {
			return fmt.Errorf("unknown --what %q: want %s or all", o.what, strings.Join(plotKinds, ", "))
		}
		kinds = []string{o.what}
	}
	ext := filepath.Ext(o.out)
	format := strings.ToLower(strings.TrimPrefix(ext, "."))
	if format != plots.SVG && format != plots.PNG {
		return fmt.Errorf("--out %s: the extension must be .svg or .png, not %q", o.out, ext)
	}
	if o.width <= 0 || o.height <= 0 || o.width > plots.MaxPixels || o.height > plots.MaxPixels {
		return fmt.Errorf("--width %d --height %d: each must be 1 to %d pixels", o.width, o.height, plots.MaxPixels)
	}
	recs, err := readPlotSource(ctx, source, o.coordinator, o.tls)
	if errors.Is(err, metrics.ErrNoHistory) {
		return fmt.Errorf("%w\n%s is written next to a job's step-NNNNNNNN directories by training runs with checkpoints enabled",
			err, metrics.HistoryFile)
	}
	if err != nil {
		return err
	}
	for _, kind := range kinds {
		c := historyChart(kind, recs, 2*o.width)
		c.LogY = o.logY
		b, err := plots.Render(c, format, o.width, o.height)
		if err != nil {
			return err
		}
		path := o.out
		if len(kinds) > 1 {
			path = strings.TrimSuffix(o.out, ext) + "-" + kind + ext
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		counts := c.PointCounts()
		lines := make([]string, len(c.Lines))
		for i, l := range c.Lines {
			lines[i] = l.Name + " " + plural(int64(counts[i]), "point")
		}
		fmt.Fprintf(out, "wrote %s: %s (%s in the history)\n", path, strings.Join(lines, ", "), plural(int64(len(recs)), "step"))
	}
	return nil
}

// readPlotSource reads the history of source: a path, or with coordinator
// a job id.
func readPlotSource(ctx context.Context, source, coordinator string, tls tlsFiles) ([]metrics.Record, error) {
	if coordinator == "" {
		if _, err := os.Stat(source); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("source %s does not exist (a job id needs --coordinator)", source)
		}
		return metrics.ReadHistory(source)
	}
	var recs []metrics.Record
	t := coordTarget{coordinator: coordinator, timeout: 10 * time.Second, tls: tls}
	err := t.with(ctx, func(ctx context.Context, c *coordClients) error {
		r, err := c.coord.GetJobHistory(ctx, &api.GetJobHistoryRequest{JobId: source})
		if err != nil {
			return fmt.Errorf("history of %s: %w", source, err)
		}
		recs = jobHistoryRecords(r.GetHistory())
		if len(recs) == 0 {
			return fmt.Errorf("%w: job %s has reported no step yet", metrics.ErrNoHistory, source)
		}
		return nil
	})
	return recs, err
}

// jobHistoryRecords turns a coordinator's job history into records by
// step: its points, with the evaluations on theirs.
func jobHistoryRecords(h *api.JobHistory) []metrics.Record {
	byStep := map[int]int{} // step → index in recs
	var recs []metrics.Record
	for _, p := range h.GetPoints() {
		byStep[int(p.GetStep())] = len(recs)
		recs = append(recs, metrics.Record{T: p.GetUnixNano(), Step: int(p.GetStep()), Loss: p.GetLoss(), SamplesPerS: p.GetSamplesPerSecond()})
	}
	for _, e := range h.GetEvals() {
		if i, ok := byStep[int(e.GetStep())]; ok {
			recs[i].ValLoss, recs[i].ValAccuracy = e.GetLoss(), e.GetAccuracy()
			continue
		}
		recs = append(recs, metrics.Record{T: e.GetUnixNano(), Step: int(e.GetStep()), Loss: math.NaN(), ValLoss: e.GetLoss(), ValAccuracy: e.GetAccuracy()})
	}
	slices.SortStableFunc(recs, func(a, b metrics.Record) int { return a.Step - b.Step })
	return recs
}

// historyChart builds chart kind (one of plotKinds) from a history sorted
// by step, each series downsampled to maxPoints. A field the history never
// recorded (zero on every step) leaves its chart without data.
func historyChart(kind string, recs []metrics.Record, maxPoints int) plots.Chart {
	series := func(v func(metrics.Record) float64, keep func(float64) bool) []plots.Point {
		var pts []plots.Point
		for _, r := range recs {
			if y := v(r); keep(y) {
				pts = append(pts, plots.Point{X: float64(r.Step), Y: y})
			}
		}
		return pts
	}
	recorded := func(y float64) bool { return y != 0 }
	always := func(float64) bool { return true }
	switch kind {
	case "throughput":
		tokens := series(func(r metrics.Record) float64 { return r.TokensPerS }, recorded)
		if len(tokens) > 0 {
			return plots.ThroughputChart("tokens/s", tokens, maxPoints)
		}
		return plots.ThroughputChart("samples/s", series(func(r metrics.Record) float64 { return r.SamplesPerS }, recorded), maxPoints)
	case "lr":
		if !slices.ContainsFunc(recs, func(r metrics.Record) bool { return r.LR != 0 }) {
			return plots.LearningRateChart(nil, maxPoints)
		}
		// Once any step recorded it, a zero learning rate (warm-up's first
		// step) is a value.
		return plots.LearningRateChart(series(func(r metrics.Record) float64 { return r.LR }, always), maxPoints)
	default: // "loss"
		train := series(func(r metrics.Record) float64 { return r.Loss }, always)
		val := series(func(r metrics.Record) float64 { return r.ValLoss }, recorded)
		return plots.LossChart(train, val, maxPoints)
	}
}
