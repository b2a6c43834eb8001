package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/loomtrain/loom/train"
)

// progressView shows training progress: a single redrawn bar on a terminal,
// plain structured log lines every `every` steps otherwise.
type progressView struct {
	out      io.Writer
	tty      bool
	every    int
	log      *zap.Logger
	lastDraw time.Time
	width    int
	logged   int // the last step logged (non-terminal)
}

func newProgressView(out *os.File, every int, log *zap.Logger) *progressView {
	tty := term.IsTerminal(int(out.Fd()))
	w := 100
	if tty {
		if cols, _, err := term.GetSize(int(out.Fd())); err == nil && cols > 40 {
			w = cols
		}
	}
	if every <= 0 {
		every = 50
	}
	return &progressView{out: out, tty: tty, every: every, log: log, width: w}
}

// Update renders one step's progress.
func (v *progressView) Update(p train.Progress) {
	last := p.Step == p.TotalSteps
	if !v.tty {
		// A launch with workers sees the job's step every 200 ms, not
		// every step: it logs each time a multiple of every was passed.
		if p.Step/v.every > v.logged/v.every || last || !math.IsNaN(p.TestAccuracy) {
			v.logged = p.Step
			fields := []zap.Field{zap.Int("step", p.Step), zap.Int("of", p.TotalSteps), zap.Int("epoch", p.Epoch),
				zap.Float64("loss", round(p.Loss, 4)), zap.Float64("lr", round(float64(p.LR), 6)),
				zap.Float64("samples_per_s", round(p.SamplesPerSec, 0)), zap.Duration("eta", p.ETA.Round(time.Second))}
			if p.GradNorm > 0 {
				fields = append(fields, zap.Float64("grad_norm", round(p.GradNorm, 4)))
			}
			if p.TokensPerSample > 1 {
				fields = append(fields, zap.Float64("tokens_per_s", round(p.SamplesPerSec*float64(p.TokensPerSample), 0)))
			}
			switch {
			case !math.IsNaN(p.TestAccuracy) && p.TokensPerSample > 1:
				fields = append(fields, zap.Float64("val_loss", round(p.TestLoss, 4)), zap.Float64("val_perplexity", round(math.Exp(p.TestLoss), 2)))
			case !math.IsNaN(p.TestAccuracy):
				fields = append(fields, zap.Float64("test_accuracy", round(p.TestAccuracy, 4)))
			}
			v.log.Info("train", fields...)
		}
		return
	}
	if !last && time.Since(v.lastDraw) < 100*time.Millisecond && math.IsNaN(p.TestAccuracy) {
		return
	}
	v.lastDraw = time.Now()
	switch {
	case !math.IsNaN(p.TestAccuracy) && p.TokensPerSample > 1:
		fmt.Fprintf(v.out, "\r\033[K  step %d: validation loss %.4f, perplexity %.2f\n", p.Step, p.TestLoss, math.Exp(p.TestLoss))
	case !math.IsNaN(p.TestAccuracy):
		fmt.Fprintf(v.out, "\r\033[K  step %d: test accuracy %.2f%%\n", p.Step, 100*p.TestAccuracy)
	}
	rate := human(p.SamplesPerSec) + " samples/s"
	if p.TokensPerSample > 1 {
		rate = human(p.SamplesPerSec*float64(p.TokensPerSample)) + " tokens/s"
	}
	info := fmt.Sprintf(" %d/%d  ep %d  loss %.4f  %s  ETA %s", p.Step, p.TotalSteps, p.Epoch, p.Loss, rate, p.ETA.Round(time.Second))
	barW := max(10, min(40, v.width-len(info)-4))
	fmt.Fprintf(v.out, "\r\033[K%s%s", drawBar(float64(p.Step)/float64(max(1, p.TotalSteps)), barW), info)
	if last {
		fmt.Fprintln(v.out)
	}
}

// Done ends the bar's line if training stopped early.
func (v *progressView) Done() {
	if v.tty {
		fmt.Fprint(v.out, "\r\033[K")
	}
}

// drawBar is a bar of width cells, the fraction frac (clamped to [0, 1])
// of them filled.
func drawBar(frac float64, width int) string {
	filled := int(float64(width) * min(1, max(0, frac)))
	return strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
}

func human(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// newLogger returns the CLI's logger: human-readable console lines on stderr.
func newLogger(level zapcore.Level) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	enc.EncodeCaller = nil
	enc.EncodeLevel = zapcore.CapitalLevelEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(core)
}
