package web

import (
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
)

// jobFSM is a coordinator state machine holding one running job with two
// workers and steps steps of progress (an evaluation every 1000), as the
// leader would have written it.
func jobFSM(t testing.TB, steps int) *coordinator.FSM {
	t.Helper()
	f := coordinator.NewFSM(zap.NewNop())
	i := uint64(0)
	t0 := time.Unix(1_700_000_000, 0)
	apply := func(m proto.Message) {
		i++
		b, err := coordinator.EncodeCommand(m)
		if err != nil {
			t.Fatal(err)
		}
		if r := f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: b, AppendedAt: t0.Add(time.Duration(i) * 10 * time.Millisecond)}).(coordinator.ApplyResult); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	prof := func(addr string) *api.DeviceProfile {
		return &api.DeviceProfile{DeviceName: "cpu(2 threads)", CollectiveAddr: addr}
	}
	apply(&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "page", GlobalBatch: 64}, NowUnixNano: t0.UnixNano()})
	apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w0", Profile: prof("127.0.0.1:1"), JobId: "job-0001"}})
	apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w1", Profile: prof("127.0.0.1:2"), JobId: "job-0001"}})
	apply(&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1, Reason: "2 workers", Ranks: []*api.Rank{
		{WorkerId: "w0", BatchShare: 40, CollectiveAddr: "127.0.0.1:1"}, {Rank: 1, WorkerId: "w1", BatchShare: 24, CollectiveAddr: "127.0.0.1:2"}}}})
	for s := 1; s <= steps; s++ {
		w := []string{"w0", "w1"}[s%2]
		r := &api.ReportProgressRequest{JobId: "job-0001", WorkerId: w, Generation: 1, Step: int64(s), Loss: 3 / float64(s)}
		if s%1000 == 0 {
			acc := 0.9
			r.TestAccuracy, r.TestLoss = &acc, 3/float64(s)
		}
		apply(&api.CmdReportProgress{Report: r, SamplesPerSecond: 1000 + float64(s%7)})
	}
	return f
}

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var dataPointsRE = regexp.MustCompile(`data-points="([^"]*)"`)

// The pages render the job from the state: the loss chart holds the
// history's points (downsampled), the plan its ranks, the event log its
// events; the live part alone on ?part=live; unknown jobs, workers and
// paths are 404 pages that say what is missing; the JSON views parse.
func TestPages(t *testing.T) {
	srv := httptest.NewServer(Handler(jobFSM(t, 5000), http.NotFoundHandler()))
	defer srv.Close()

	code, body := get(t, srv, "/")
	if code != 200 || !strings.Contains(body, `href="/jobs/job-0001"`) || !strings.Contains(body, "running") {
		t.Fatalf("jobs page %d:\n%s", code, body)
	}
	code, body = get(t, srv, "/jobs/job-0001")
	if code != 200 {
		t.Fatalf("job page %d:\n%s", code, body)
	}
	for _, want := range []string{"job-0001 · page", `id="chart-loss"`, `id="chart-speed"`, `id="chart-workers"`, `href="/workers/w0"`,
		"generation 1: 2 ranks (w0 40, w1 24): 2 workers", "held-out loss", `data-running="true"`, "setTimeout(tick"} {
		if !strings.Contains(body, want) {
			t.Errorf("job page lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`(src|href)="(https?:)?//[^"]*"|@import`).FindString(body); m != "" {
		t.Errorf("the page loads %s from elsewhere", m)
	}
	dp := dataPointsRE.FindAllStringSubmatch(body, -1)
	if len(dp) != 3 {
		t.Fatalf("%d charts with data-points, want 3", len(dp))
	}
	counts := map[string]int{}
	for _, kv := range strings.Split(dp[0][1], ",") {
		name, n, _ := strings.Cut(kv, ":")
		counts[name], _ = strconv.Atoi(n)
	}
	if counts["train"] < 100 || counts["train"] > plotPoints || counts["val"] != 5 {
		t.Fatalf("loss chart points %q: want 100..%d train points and the 5 evaluations", dp[0][1], plotPoints)
	}
	if !strings.Contains(dp[2][1], "w0:") || !strings.Contains(dp[2][1], "w1:") {
		t.Fatalf("worker chart %q lacks a worker", dp[2][1])
	}
	// Every chart is well-formed SVG.
	for _, m := range regexp.MustCompile(`(?s)<svg.*?</svg>`).FindAllString(body, -1) {
		if err := xml.Unmarshal([]byte(m), new(struct{})); err != nil {
			t.Fatalf("chart is not valid XML: %v", err)
		}
	}

	code, body = get(t, srv, "/jobs/job-0001?part=live")
	if code != 200 || strings.Contains(body, "<html") || !strings.Contains(body, `id="events"`) {
		t.Fatalf("live part %d:\n%.300s", code, body)
	}
	for path, want := range map[string]string{
		"/jobs/job-0042":             `job &#34;job-0042&#34; does not exist; the coordinators know job-0001`,
		"/workers/ghost":             `worker &#34;ghost&#34; is not registered`,
		"/nowhere":                   "no page at /nowhere",
		"/api/jobs/job-0042/history": `{"error":"job \"job-0042\" does not exist"}`,
	} {
		if code, body := get(t, srv, path); code != 404 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %q, want 404 with %q", path, code, body, want)
		}
	}
	if code, body := get(t, srv, "/workers/w1"); code != 200 || !strings.Contains(body, "cpu(2 threads)") || !strings.Contains(body, `data-points="w1:`) {
		t.Errorf("worker page %d:\n%.500s", code, body)
	}
	if code, body := get(t, srv, "/api/jobs/job-0001/events"); code != 200 || !strings.Contains(body, `"kind":"plan"`) && !strings.Contains(body, `"kind": "plan"`) {
		t.Errorf("events JSON %d: %.300s", code, body)
	}
	if code, _ := get(t, srv, "/metrics"); code != 404 { // the handler given
		t.Errorf("/metrics served %d, want the given handler's 404", code)
	}
}

// BenchmarkJobPage is the first load of a job's page with 10^5 steps of
// history (the figure: under 200 ms).
func BenchmarkJobPage(b *testing.B) {
	h := Handler(jobFSM(b, 100_000), nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/jobs/job-0001", nil))
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// A language model's job throughput is in tokens/s (its context times the
// samples/s), a classifier's in samples/s.
func TestSpeedChartUnit(t *testing.T) {
	h := &api.JobHistory{Points: []*api.HistoryPoint{{UnixNano: 1e9, Step: 1, SamplesPerSecond: 10}}}
	gpt := &api.Job{Spec: &api.JobSpec{ConfigYaml: []byte("model: {kind: gpt, context: 256}\n")}}
	mlp := &api.Job{Spec: &api.JobSpec{ConfigYaml: []byte("model: {kind: mlp}\n")}}
	if c := speedChart(h, tokensPerSample(gpt)); c.YLabel != "tokens/s" || c.Lines[0].Points[0].Y != 2560 {
		t.Fatalf("gpt: %s %v", c.YLabel, c.Lines[0].Points)
	}
	if c := speedChart(h, tokensPerSample(mlp)); c.YLabel != "samples/s" || c.Lines[0].Points[0].Y != 10 {
		t.Fatalf("mlp: %s %v", c.YLabel, c.Lines[0].Points)
	}
}
