package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/metrics"
	"github.com/loomtrain/loom/train"
	"github.com/loomtrain/loom/worker"
)

// metricsJobYAML is a small MNIST job: name, steps, checkpoint directory.
const metricsJobYAML = `name: %s
seed: 3
model: {kind: mlp, layers: [784, 64, 10]}
train: {epochs: 1, max_steps: %d, global_batch: 200}
optimizer: {kind: adamw, lr: 0.003}
checkpoint: {dir: %s, every_steps: 10, keep: 0}
`

// Two workers, each serving its registry as loom worker --metrics-addr
// does, train a job: scraped after the job, each counts every step in its
// step counter and histogram, their samples add up to the job's, their
// all-reduces and placement are there, and the job's metrics.jsonl has one
// record per step, written by rank 0.
func TestWorkersServeMetricsAndHistory(t *testing.T) {
	const steps, batch = 20, 200 // metricsJobYAML's global batch
	dir := t.TempDir()
	srv := coordinator.NewTestServer(t, nil)
	client := api.NewCoordinatorClient(coordinator.Dial(t, srv.Addr()))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	jobID := submitMetricsJob(ctx, t, client, "prom", steps, filepath.Join(dir, "ckpt"), 2, 0)
	ids := []string{"w0", "w1"}
	urls := runAgents(ctx, t, srv.Addr(), jobID, ids, func(cfg *worker.AgentConfig) {
		if cfg.ID == "w1" {
			cfg.Listen = "0.0.0.0:0" // advertised at this host's routable address
		}
	})
	// w1's peer reached it at its advertised address, not at 0.0.0.0.
	final, err := client.GetJob(ctx, &api.GetJobRequest{JobId: jobID})
	if err != nil {
		t.Fatal(err)
	}
	var w1Addr string
	for _, r := range final.GetPlan().GetRanks() {
		if r.GetWorkerId() == "w1" {
			w1Addr = r.GetCollectiveAddr()
		}
	}
	if host, _, _ := net.SplitHostPort(w1Addr); host == "" || host == "0.0.0.0" || host == "127.0.0.1" {
		t.Fatalf("w1, bound to 0.0.0.0, is in the last plan at %q", w1Addr)
	}

	var samples, checkpoints float64
	ranks := map[string]bool{}
	for i, url := range urls {
		s, err := metrics.Scrape(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		who := []string{"job", "prom", "worker", ids[i]}
		if v, err := s.Value("loom_train_steps_total", who...); err != nil || v != steps {
			t.Errorf("%s: loom_train_steps_total %v (%v), want %d", ids[i], v, err, steps)
		}
		if n, err := s.Count("loom_train_step_duration_seconds", who...); err != nil || n != steps {
			t.Errorf("%s: step histogram count %d (%v), want %d", ids[i], n, err, steps)
		}
		if v, err := s.Value("loom_train_phase_seconds_total", append(who, "phase", "compute")...); err != nil || v <= 0 {
			t.Errorf("%s: compute seconds %v (%v)", ids[i], v, err)
		}
		for _, phase := range []string{"communication", "optimizer", "idle"} {
			if _, err := s.Value("loom_train_phase_seconds_total", append(who, "phase", phase)...); err != nil {
				t.Errorf("%s: phase %s: %v", ids[i], phase, err)
			}
		}
		v, _ := s.Value("loom_train_samples_total", who...)
		samples += v
		var sent float64
		var reduces uint64
		for _, tr := range []string{"tcp", "shm"} {
			b, _ := s.Value("loom_collective_allreduce_bytes_total", append(who, "transport", tr)...)
			n, _ := s.Count("loom_collective_allreduce_duration_seconds", append(who, "transport", tr)...)
			sent, reduces = sent+b, reduces+n
		}
		if sent <= 0 || reduces < steps {
			t.Errorf("%s: %v all-reduce bytes in %d all-reduces, want some in at least one per step", ids[i], sent, reduces)
		}
		if g, err := s.Value("loom_plan_generation", who...); err != nil || g < 1 {
			t.Errorf("%s: loom_plan_generation %v (%v)", ids[i], g, err)
		}
		info := s.Series("loom_worker_info", who...)
		if len(info) != 1 || info[0].GetGauge().GetValue() != 1 {
			t.Fatalf("%s: loom_worker_info %v, want one series of 1", ids[i], info)
		}
		for _, l := range info[0].GetLabel() {
			if l.GetName() == "rank" {
				ranks[l.GetValue()] = true
			}
		}
		n, _ := s.Count("loom_checkpoint_write_duration_seconds", who...)
		checkpoints += float64(n)
	}
	if samples != steps*batch {
		t.Errorf("the workers computed on %v samples, want %d", samples, steps*batch)
	}
	if !ranks["0"] || !ranks["1"] {
		t.Errorf("ranks %v, want 0 and 1", ranks)
	}
	if checkpoints != steps/10 {
		t.Errorf("%v checkpoint writes timed, want %d", checkpoints, steps/10)
	}
	assertHistory(t, filepath.Join(dir, "ckpt", "prom"), steps, true)
}

// assertHistory checks the metrics history of a job directory: one record
// per step, its final evaluation on the last, and the raw file one line
// per step plus that evaluation's.
func assertHistory(t *testing.T, jobDir string, steps int, cluster bool) []metrics.Record {
	t.Helper()
	recs, err := metrics.ReadHistory(jobDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != steps {
		t.Fatalf("%d records, want %d", len(recs), steps)
	}
	for i, r := range recs {
		if r.Step != i+1 || r.T <= 0 || r.Loss <= 0 || r.LR <= 0 || r.SamplesPerS <= 0 || (r.Worker != "") != cluster || (r.Generation > 0) != cluster {
			t.Fatalf("record %d: %+v", i, r)
		}
		if (r.ValAccuracy > 0) != (i == steps-1) {
			t.Fatalf("record %d: evaluation %v, want one on the last step only", i, r.ValAccuracy)
		}
	}
	b, err := os.ReadFile(filepath.Join(jobDir, metrics.HistoryFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != steps+1 {
		t.Fatalf("%d lines, want %d (a step's, and the final evaluation's)", n, steps+1)
	}
	return recs
}

var servingRE = regexp.MustCompile(`serving metrics\s+\{"addr": "([^"]+)"`)

// loom launch --metrics-addr serves the training's metrics (the address
// is logged) and the run leaves its history beside its checkpoints and in
// the --metrics file.
func TestLaunchServesMetrics(t *testing.T) {
	const steps = 60
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	job := writeJob(t, fmt.Sprintf(metricsJobYAML, "solo", steps, ckpt))
	cmd := loomCmd(t, "launch", job, "--device", "cpu:threads=1", "--json", "--metrics-addr", "127.0.0.1:0",
		"--metrics", filepath.Join(dir, "steps.jsonl"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	var logs strings.Builder
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		// Served before the data is loaded: the run is still going.
		s, err := metrics.Scrape(t.Context(), "http://"+a+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		info := s.Series("loom_worker_info", "job", "solo", "worker", "local", "rank", "0", "stage", "0")
		if len(info) != 1 {
			t.Fatalf("loom_worker_info: %v", s.Series("loom_worker_info"))
		}
		if v, err := s.Value("loom_train_steps_total", "job", "solo"); err != nil || v > steps {
			t.Fatalf("loom_train_steps_total %v (%v)", v, err)
		}
	case <-time.After(time.Minute):
		t.Fatal("no serving metrics log line")
	}
	err = cmd.Wait()
	<-logged
	if err != nil {
		t.Fatalf("launch: %v\n%s", err, logs.String())
	}
	var sum train.Summary
	if err := json.Unmarshal([]byte(stdout.String()), &sum); err != nil || sum.Steps != steps {
		t.Fatalf("summary %v: %s", err, stdout.String())
	}
	recs := assertHistory(t, filepath.Join(ckpt, "solo"), steps, false)
	if last := recs[steps-1]; last.ValAccuracy != sum.TestAccuracy || last.ValLoss != sum.TestLoss {
		t.Fatalf("last record %+v, summary test accuracy %v loss %v", last, sum.TestAccuracy, sum.TestLoss)
	}
	copied, err := metrics.ReadHistory(filepath.Join(dir, "steps.jsonl"))
	if err != nil || len(copied) != steps || copied[steps-1] != recs[steps-1] {
		t.Fatalf("--metrics file: %v, %d records", err, len(copied))
	}
}

// A --metrics-addr port in use fails the launch before training, naming
// the flag; with --workers each worker gets its own port.
func TestLaunchMetricsAddrFlag(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	job := writeJob(t, fmt.Sprintf(metricsJobYAML, "busy", 5, t.TempDir()))
	out, err := runLoom(t, "launch", job, "--quiet", "--metrics-addr", ln.Addr().String())
	if want := "--metrics-addr " + ln.Addr().String() + ": address already in use"; err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q\n%s", err, want, out)
	}
	if _, err := runLoom(t, "launch", job, "--coordinator", "127.0.0.1:1", "--metrics-addr", "127.0.0.1:9100"); err == nil ||
		!strings.Contains(err.Error(), "loom worker --metrics-addr") {
		t.Fatalf("with --coordinator: error %v", err)
	}
	for _, tc := range []struct {
		addr string
		i    int
		want string
	}{{"127.0.0.1:9100", 0, "127.0.0.1:9100"}, {"127.0.0.1:9100", 3, "127.0.0.1:9103"}, {":0", 5, ":0"}, {"[::1]:65534", 1, "[::1]:65535"}} {
		if got, err := workerMetricsAddr(tc.addr, tc.i); err != nil || got != tc.want {
			t.Errorf("worker %d of %s: %q %v, want %q", tc.i, tc.addr, got, err, tc.want)
		}
	}
	for _, bad := range []string{"9100", "host:port", "127.0.0.1:65535"} {
		if _, err := workerMetricsAddr(bad, 1); err == nil || !strings.HasPrefix(err.Error(), "--metrics-addr "+bad) {
			t.Errorf("%s: error %v", bad, err)
		}
	}
}

// loom worker with a wrong or missing join token is refused with the
// reason and exits; with the token it trains.
func TestWorkerJoinToken(t *testing.T) {
	dir := t.TempDir()
	job, err := jobspec.Load(writeJob(t, fmt.Sprintf(metricsJobYAML, "tok", 3, filepath.Join(dir, "ckpt"))))
	if err != nil {
		t.Fatal(err)
	}
	body, err := job.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	srv := coordinator.NewTestServer(t, func(c *coordinator.Config) { c.JoinToken = "s3cret" })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sub, err := api.NewCoordinatorClient(coordinator.Dial(t, srv.Addr())).SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: job.Name, ConfigYaml: body, GlobalBatch: 200, MinWorkers: 1, PipelineStages: 1}})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"worker", "--coordinator", srv.Addr(), "--job", sub.GetJob().GetId(), "--id", "w1", "--device", "cpu:threads=1"}
	for _, tc := range []struct {
		extra []string
		want  string
	}{
		{nil, "admits workers with a join token"},
		{[]string{"--join-token", "guess"}, "join token not accepted"},
		{[]string{"--join-token", "x", "--join-token-file", tokenFile}, "not both"},
	} {
		if _, err := runLoom(t, append(args, tc.extra...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.extra, err, tc.want)
		}
	}
	if out, err := runLoom(t, append(args, "--join-token-file", tokenFile)...); err != nil {
		t.Fatalf("with the token: %v\n%s", err, out)
	}
}

// A worker the plan leaves out (the job admits one) stands by, and exits
// cleanly when the job completes: it is not told the job was cancelled.
func TestStandbyWorkerExitsWhenJobCompletes(t *testing.T) {
	srv := coordinator.NewTestServer(t, nil)
	client := api.NewCoordinatorClient(coordinator.Dial(t, srv.Addr()))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	jobID := submitMetricsJob(ctx, t, client, "one", 4, filepath.Join(t.TempDir(), "ckpt"), 1, 1)
	runAgents(ctx, t, srv.Addr(), jobID, []string{"w0", "w1"}, nil)
	j, err := client.GetJob(ctx, &api.GetJobRequest{JobId: jobID})
	if err != nil || j.GetJob().GetState() != api.JobState_JOB_STATE_COMPLETED || len(j.GetPlan().GetRanks()) != 1 {
		t.Fatalf("job %v (%v)", j, err)
	}
}

// runAgents runs a worker agent per id in this process against the
// coordinator at addr for job, each with a CPU device of one thread and
// its metrics served on a port of its own (their /metrics URLs are
// returned), tweak adjusting each config; it waits for every agent and
// fails the test if one fails.
func runAgents(ctx context.Context, t *testing.T, addr, job string, ids []string, tweak func(cfg *worker.AgentConfig)) (urls []string) {
	t.Helper()
	errs := make(chan error, len(ids))
	for _, id := range ids {
		reg := metrics.NewRegistry()
		maddr, err := metrics.Serve(ctx, "127.0.0.1:0", "--metrics-addr", reg, nil)
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, "http://"+maddr.String()+"/metrics")
		dev, err := cpu.New(cpu.Config{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		cfg := worker.DefaultAgentConfig()
		cfg.ID, cfg.Coordinators, cfg.JobID, cfg.Device, cfg.Metrics = id, []string{addr}, job, dev, reg
		if tweak != nil {
			tweak(&cfg)
		}
		go func() { errs <- worker.RunAgent(ctx, cfg) }()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatalf("worker: %v", err)
		}
	}
	return urls
}

// submitMetricsJob submits metricsJobYAML (name, steps, checkpoints in
// ckpt) to client, for between minW and maxW (0: any) workers, and returns
// the job's id.
func submitMetricsJob(ctx context.Context, t *testing.T, client api.CoordinatorClient, name string, steps int, ckpt string, minW, maxW int32) string {
	t.Helper()
	job, err := jobspec.Load(writeJob(t, fmt.Sprintf(metricsJobYAML, name, steps, ckpt)))
	if err != nil {
		t.Fatal(err)
	}
	body, err := job.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := client.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: job.Name, ConfigYaml: body,
		GlobalBatch: int64(job.Train.GlobalBatch), MinWorkers: minW, MaxWorkers: maxW, PipelineStages: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return sub.GetJob().GetId()
}
