package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/metrics"
)

// writeHistory writes <dir>/job/metrics.jsonl by hand: steps 0..steps-1
// with an evaluation every 50th step, then steps 100..109 again (a resumed
// run re-logging them), plus an empty step-00000100 checkpoint directory.
// It returns the job directory.
func writeHistory(t *testing.T, steps int, tokens bool) string {
	t.Helper()
	job := filepath.Join(t.TempDir(), "job")
	if err := os.MkdirAll(filepath.Join(job, "step-00000100"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	rec := func(step int) {
		r := metrics.Record{T: 1_700_000_000_000_000_000 + int64(step)*1e9, Step: step, Loss: 3 / (1 + float64(step)/100),
			LR: 1e-3 * float64(step) / float64(steps), SamplesPerS: 512 + float64(step%5)}
		if tokens && step > 0 {
			r.TokensPerS = 40_000 + float64(step%7)
		}
		if step%50 == 49 {
			r.ValLoss, r.ValAccuracy = r.Loss+0.1, 0.9
		}
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	for s := range steps {
		rec(s)
	}
	for s := 100; s < 110; s++ {
		rec(s)
	}
	if err := os.WriteFile(filepath.Join(job, metrics.HistoryFile), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return job
}

// svgPoints parses file as XML (all of it) and returns the root's
// data-points attribute.
func svgPoints(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var root struct {
		XMLName xml.Name
		Points  string `xml:"data-points,attr"`
	}
	if err := xml.Unmarshal(b, &root); err != nil {
		t.Fatalf("%s is not XML: %v", file, err)
	}
	if root.XMLName.Local != "svg" {
		t.Fatalf("%s: root <%s>, want <svg>", file, root.XMLName.Local)
	}
	return root.Points
}

func TestPlotLossSVGAndPNG(t *testing.T) {
	job := writeHistory(t, 300, true)
	out := filepath.Join(t.TempDir(), "loss.svg")
	got, err := runLoom(t, "plot", job, "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if want := "wrote " + out + ": train 300 points, val 6 points (300 steps in the history)"; !strings.Contains(got, want) {
		t.Errorf("output %q lacks %q", got, want)
	}
	if p := svgPoints(t, out); p != "train:300,val:6" {
		t.Errorf("data-points = %q, want train:300,val:6", p)
	}

	pngOut := filepath.Join(t.TempDir(), "loss.PNG")
	if got, err := runLoom(t, "plot", filepath.Join(job, "step-00000100"), "-o", pngOut, "--width", "400", "--height", "250", "--log-y"); err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	f, err := os.Open(pngOut)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if s := img.Bounds().Size(); s.X != 400 || s.Y != 250 {
		t.Errorf("png is %v, want 400x250", s)
	}
}

func TestPlotAllFromFile(t *testing.T) {
	job := writeHistory(t, 300, true)
	out := filepath.Join(t.TempDir(), "run.svg")
	got, err := runLoom(t, "plot", filepath.Join(job, metrics.HistoryFile), "--what", "all", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	base := strings.TrimSuffix(out, ".svg")
	for file, want := range map[string]string{
		base + "-loss.svg":       "train:300,val:6",
		base + "-throughput.svg": "tokens/s:299", // step 0 measured no throughput
		base + "-lr.svg":         "lr:300",       // warm-up's zero at step 0 included
	} {
		if p := svgPoints(t, file); p != want {
			t.Errorf("%s: data-points = %q, want %q", file, p, want)
		}
		if !strings.Contains(got, "wrote "+file+":") {
			t.Errorf("output %q does not report %s", got, file)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("--what all also wrote %s", out)
	}
}

func TestPlotThroughputSamplesAndDownsampling(t *testing.T) {
	job := writeHistory(t, 5000, false)
	out := filepath.Join(t.TempDir(), "tp.svg")
	got, err := runLoom(t, "plot", job, "--what", "throughput", "--out", out, "--width", "300")
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if p := svgPoints(t, out); p != "samples/s:600" {
		t.Errorf("data-points = %q, want samples/s:600 (2 × width of 5000 steps)", p)
	}
	if !strings.Contains(got, "samples/s 600 points (5000 steps in the history)") {
		t.Errorf("output %q", got)
	}
}

func TestPlotErrors(t *testing.T) {
	job := writeHistory(t, 10, false)
	empty := t.TempDir()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing source", []string{filepath.Join(dir, "nope"), "--out", "x.svg"}, []string{"source " + filepath.Join(dir, "nope") + " does not exist"}},
		{"no history", []string{empty, "--out", filepath.Join(dir, "x.svg")}, []string{empty, metrics.HistoryFile, "training runs with checkpoints enabled"}},
		{"unknown what", []string{job, "--out", "x.svg", "--what", "accuracy"}, []string{`unknown --what "accuracy"`, "loss, throughput, lr or all"}},
		{"bad extension", []string{job, "--out", "x.pdf"}, []string{"x.pdf", ".svg or .png", `".pdf"`}},
		{"no extension", []string{job, "--out", "plot"}, []string{".svg or .png"}},
		{"no out", []string{job}, []string{`"out" not set`}},
		{"bad size", []string{job, "--out", "x.png", "--width", "0"}, []string{"--width 0", "1 to 8192"}},
	} {
		got, err := runLoom(t, append([]string{"plot"}, tc.args...)...)
		if err == nil {
			t.Errorf("%s: no error; output %q", tc.name, got)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed runs wrote %v", entries)
	}
}

func TestPlotHelp(t *testing.T) {
	got, err := runLoom(t, "plot", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"loom plot checkpoints/", "--what", "--width", "--height", "metrics.jsonl", "step-NNNNNNNN"} {
		if !strings.Contains(got, w) {
			t.Errorf("help lacks %q", w)
		}
	}
}

// With --coordinator the chart comes from the job's history in the
// coordinators' state: its reported steps and evaluations.
func TestPlotFromCoordinator(t *testing.T) {
	s := coordinator.NewTestServer(t, func(c *coordinator.Config) { c.ProgressInterval = 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(coordinator.Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "p", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	id := sub.Job.Id
	if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w1", JobId: id, Profile: &api.DeviceProfile{DeviceName: "cpu", CollectiveAddr: "127.0.0.1:9"}}); err != nil {
		t.Fatal(err)
	}
	gen := coordinator.WaitRanks(ctx, t, c, id, 1).GetGeneration()
	if _, err := runLoom(t, "plot", id, "--coordinator", s.Addr(), "--out", filepath.Join(t.TempDir(), "x.svg")); err == nil || !strings.Contains(err.Error(), "has reported no step yet") {
		t.Fatalf("no steps yet: %v", err)
	}
	for step := int64(1); step <= 30; step++ {
		r := &api.ReportProgressRequest{JobId: id, WorkerId: "w1", Generation: gen, Step: step, Loss: 3 - float64(step)/20, Samples: 8, StepSeconds: 0.01}
		if step%10 == 0 {
			acc := 0.5
			r.TestAccuracy, r.TestLoss = &acc, 2
		}
		if _, err := c.ReportProgress(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "loss.svg")
	msg, err := runLoom(t, "plot", id, "--coordinator", s.Addr(), "--out", out)
	if err != nil || !strings.Contains(msg, "train 30 points, val 3 points (30 steps in the history)") {
		t.Fatalf("plot: %v\n%s", err, msg)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Contains(b, []byte(`data-points="train:30,val:3"`)) {
		t.Fatalf("svg: %v %.300s", err, b)
	}
	if _, err := runLoom(t, "plot", "job-0404", "--coordinator", s.Addr(), "--out", out); err == nil || !strings.Contains(err.Error(), `unknown job: "job-0404"`) {
		t.Fatalf("unknown job: %v", err)
	}
}
