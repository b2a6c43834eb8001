package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
)

// runLoom executes the CLI in-process, returning stdout+stderr and the error.
func runLoom(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestStatusAndWorkersCommands(t *testing.T) {
	s := coordinator.NewTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(coordinator.Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "mnist-mlp", GlobalBatch: 32}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "cpu-w1", Profile: &api.DeviceProfile{
		DeviceName: "cpu:avx512", Cores: 2, Gflops: map[string]float64{"f32": 80}, CollectiveAddr: "127.0.0.1:9999"}})
	if err != nil {
		t.Fatal(err)
	}
	coordinator.WaitRanks(ctx, t, c, sub.Job.Id, 1)

	out, err := runLoom(t, "status", "--coordinator", s.Addr())
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"cluster loom", "leader coord-0", sub.Job.Id, "mnist-mlp", "running", s.Addr()} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, err = runLoom(t, "workers", "--coordinator", s.Addr())
	if err != nil {
		t.Fatalf("workers: %v\n%s", err, out)
	}
	for _, want := range []string{"cpu-w1", "joining", "cpu:avx512", "f32=80", "127.0.0.1:9999"} {
		if !strings.Contains(out, want) {
			t.Errorf("workers output lacks %q:\n%s", want, out)
		}
	}
	out, err = runLoom(t, "status", "--coordinator", s.Addr(), "--json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cluster struct {
			LeaderID string `json:"leader_id"`
		} `json:"cluster"`
		Jobs []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if doc.Cluster.LeaderID != "coord-0" || len(doc.Jobs) != 1 || doc.Jobs[0].State != "JOB_STATE_RUNNING" {
		t.Fatalf("status --json: %+v", doc)
	}
	out, err = runLoom(t, "coordinator", "members", "--coordinator", s.Addr())
	if err != nil || !strings.Contains(out, "coord-0  leader") {
		t.Fatalf("coordinator members: %v\n%s", err, out)
	}
	// Drain: unknown ids are refused; the drained worker shows as draining
	// and the next plan leaves it out; once its lease expires it is lost.
	if out, err := runLoom(t, "workers", "drain", "nobody", "--coordinator", s.Addr(), "--wait", "0"); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("drain of an unknown worker: %v\n%s", err, out)
	}
	out, err = runLoom(t, "workers", "drain", "cpu-w1", "--coordinator", s.Addr(), "--wait", "0")
	if err != nil || !strings.Contains(out, "cpu-w1 is draining") {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	if out, _ := runLoom(t, "workers", "--coordinator", s.Addr()); !strings.Contains(out, "draining") {
		t.Errorf("workers output lacks the draining state:\n%s", out)
	}
	for { // the plan without it
		r, err := c.GetJob(ctx, &api.GetJobRequest{JobId: sub.Job.Id})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Plan.GetRanks()) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for { // no heartbeats: the lease expires
		out, err = runLoom(t, "workers", "--coordinator", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "lost") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("worker never shown lost:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out, "cpu-w1") || !strings.Contains(out, "ago") {
		t.Errorf("lost worker row:\n%s", out)
	}
}

func TestCoordinatorCommandsRefuseBadInput(t *testing.T) {
	cases := [][]string{
		{"status"}, // no target
		{"coordinator", "--id", "c1"},
		{"coordinator", "--id", "c1", "--data-dir", t.TempDir(), "--bootstrap", "--join", "127.0.0.1:1"},
		{"coordinator", "--id", "c1", "--data-dir", t.TempDir(), "--discovery", "http://nope"},
		{"coordinator", "--id", "c1", "--data-dir", t.TempDir(), "--raft-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"},
		{"workers", "--coordinator", "127.0.0.1:1", "--timeout", "300ms"},
	}
	for _, args := range cases {
		if out, err := runLoom(t, args...); err == nil {
			t.Errorf("loom %v succeeded:\n%s", args, out)
		}
	}
}

func TestCoordinatorRemoveCommand(t *testing.T) {
	tc := coordinator.NewTestCluster(t, 3)
	addrs := strings.Join(tc.Addrs(), ",")
	victim := "coord-2"
	if tc.Leader().ID() == victim {
		victim = "coord-1"
	}
	out, err := runLoom(t, "coordinator", "remove", victim, "--coordinator", addrs)
	if err != nil || !strings.Contains(out, "removed "+victim) {
		t.Fatalf("remove: %v\n%s", err, out)
	}
	out, err = runLoom(t, "coordinator", "members", "--coordinator", tc.Leader().Addr())
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "coord-") {
			rows++
		}
	}
	if err != nil || strings.Contains(out, victim+" ") || rows != 2 {
		t.Fatalf("members after remove: %v\n%s", err, out)
	}
	if out, err := runLoom(t, "coordinator", "remove", "ghost", "--coordinator", addrs); err == nil || !strings.Contains(err.Error(), "unknown coordinator node") {
		t.Fatalf("removing an unknown node: %v\n%s", err, out)
	}
}

// A bad --shm-ring is refused before the worker contacts anyone, naming the
// flag and the rule.
func TestWorkerRefusesBadShmRing(t *testing.T) {
	for _, v := range []string{"100B", "2GiB", "-64", "lots"} {
		out, err := runLoom(t, "worker", "--coordinator", "127.0.0.1:1", "--job", "j", "--device", "cpu:threads=1", "--shm-ring", v)
		if err == nil || !strings.Contains(err.Error(), "--shm-ring") {
			t.Errorf("--shm-ring %s: %v\n%s", v, err, out)
		}
	}
}

// loom jobs lists jobs; loom jobs cancel cancels one (the state and reason
// are on the job) and refuses an unknown job; loom version
// and loom --version print the same line.
func TestJobsCancelAndVersionCommands(t *testing.T) {
	s := coordinator.NewTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(coordinator.Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "to-cancel", GlobalBatch: 32}})
	if err != nil {
		t.Fatal(err)
	}
	id := sub.GetJob().GetId()
	out, err := runLoom(t, "jobs", "--coordinator", s.Addr())
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "to-cancel") {
		t.Fatalf("jobs: %v\n%s", err, out)
	}
	out, err = runLoom(t, "jobs", "cancel", id, "--coordinator", s.Addr(), "--reason", "wrong lr")
	if err != nil || !strings.Contains(out, "cancelled "+id) {
		t.Fatalf("jobs cancel: %v\n%s", err, out)
	}
	j, err := c.GetJob(ctx, &api.GetJobRequest{JobId: id})
	if err != nil || j.GetJob().GetState() != api.JobState_JOB_STATE_CANCELLED || j.GetJob().GetReason() != "wrong lr" {
		t.Fatalf("job after cancel: %v %v", j.GetJob(), err)
	}
	if out, err := runLoom(t, "jobs", "cancel", "job-9999", "--coordinator", s.Addr()); err == nil || !strings.Contains(err.Error(), "unknown job") {
		t.Fatalf("cancel of an unknown job: %v\n%s", err, out)
	}

	v, err := runLoom(t, "version")
	if err != nil || !strings.HasPrefix(v, "loom ") || !strings.Contains(v, "go1.") {
		t.Fatalf("version: %q %v", v, err)
	}
	if f, err := runLoom(t, "--version"); err != nil || f != v {
		t.Fatalf("--version %q differs from version %q (%v)", f, v, err)
	}
}

// loom events prints a job's log as a table and as JSON lines, and names
// a job that does not exist.
func TestEventsCommand(t *testing.T) {
	s := coordinator.NewTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(coordinator.Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "ev", GlobalBatch: 32}})
	if err != nil {
		t.Fatal(err)
	}
	id := sub.Job.Id
	if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w1", JobId: id, Profile: &api.DeviceProfile{
		DeviceName: "cpu", Cores: 2, Gflops: map[string]float64{"f32": 80}, CollectiveAddr: "127.0.0.1:9999"}}); err != nil {
		t.Fatal(err)
	}
	coordinator.WaitRanks(ctx, t, c, id, 1)
	if _, err := c.CancelJob(ctx, &api.CancelJobRequest{JobId: id, Reason: "enough"}); err != nil {
		t.Fatal(err)
	}
	out, err := runLoom(t, "events", id, "--coordinator", s.Addr())
	if err != nil {
		t.Fatalf("events: %v\n%s", err, out)
	}
	for _, want := range []string{"KIND", "submitted", `job "ev" submitted`, "worker_joined", "w1 registered", "plan", "generation 2: 1 rank (w1 32)", "no ranks (waiting for workers", "cancelled: enough"} {
		if !strings.Contains(out, want) {
			t.Errorf("events lack %q:\n%s", want, out)
		}
	}
	// Following a job that has ended prints its log and returns.
	out, err = runLoom(t, "events", id, "--coordinator", s.Addr(), "-o", "json", "-f")
	if err != nil {
		t.Fatalf("events -o json: %v\n%s", err, out)
	}
	var kinds []string
	for line := range strings.Lines(out) {
		var e struct {
			Index    string `json:"index"`
			Kind     string `json:"kind"`
			JobID    string `json:"job_id"`
			UnixNano string `json:"unix_nano"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Index == "" || e.UnixNano == "0" {
			t.Fatalf("line %q: %v", line, err)
		}
		if e.JobID == id {
			kinds = append(kinds, e.Kind)
		}
	}
	if got := strings.Join(kinds, " "); got != "submitted plan worker_joined plan cancelled" {
		t.Fatalf("job events %q", got)
	}
	if _, err := runLoom(t, "events", "job-9999", "--coordinator", s.Addr()); err == nil || !strings.Contains(err.Error(), `unknown job: "job-9999"`) {
		t.Fatalf("unknown job: %v", err)
	}
	if _, err := runLoom(t, "events", id, "--coordinator", s.Addr(), "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "want table or json") {
		t.Fatalf("-o yaml: %v", err)
	}
}

// A status-page or metrics port that is taken is refused before any work,
// naming the flag.
func TestTakenPortsNameTheirFlag(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"coordinator", "--id", "c1", "--data-dir", t.TempDir(), "--bootstrap", "--raft-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--http-addr", taken}, "--http-addr " + taken + ": "},
		{[]string{"coordinator", "--id", "c1", "--data-dir", t.TempDir(), "--bootstrap", "--raft-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", taken}, "--metrics-addr " + taken + ": "},
		{[]string{"launch", "../../examples/mnist-mlp.yaml", "--workers", "2", "--http-addr", taken}, "--http-addr " + taken + ": "},
		{[]string{"launch", "../../examples/mnist-mlp.yaml", "--http-addr", "127.0.0.1:0"}, "--http-addr serves the embedded coordinator's page, which --workers N (N > 1) starts"},
	} {
		_, err := runLoom(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// A coordinator still joining its cluster answers its probes at once:
// /healthz 200, /readyz and the rest 503, not a connection that hangs.
func TestProbesAnswerWhileJoining(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cmd := loomCmd(t, "coordinator", "--id", "c2", "--data-dir", t.TempDir(), "--join", "127.0.0.1:1",
		"--grpc-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--metrics-addr", addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	client := &http.Client{Timeout: time.Second}
	get := func(path string) (int, error) {
		r, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		r.Body.Close()
		return r.StatusCode, nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := get("/healthz")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz while joining: %d %v", code, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range []string{"/readyz", "/metrics"} {
		if code, err := get(p); err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("%s while joining: %d %v, want 503", p, code, err)
		}
	}
}
