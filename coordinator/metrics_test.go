package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/loomtrain/loom/api"
)

// The coordinator's metrics read the live state: this node leads, the job
// runs in its first real generation, the events counted; and they pass
// promlint (units in names, _total counters).
func TestCollector(t *testing.T) {
	s := NewTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "m", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w1", Profile: profile("127.0.0.1:9", 10)}); err != nil {
		t.Fatal(err)
	}
	WaitRanks(ctx, t, c, sub.Job.Id, 1)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.Collector())
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
						continue next
					}
				}
				return metricValue(m)
			}
		}
		t.Fatalf("no %s%v", name, labels)
		return 0
	}
	node := s.ID()
	for _, check := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"loom_raft_is_leader", map[string]string{"node": node}, 1},
		{"loom_raft_term", nil, 1},
		{"loom_raft_applied_index", nil, 4},
		{"loom_coordinator_jobs", map[string]string{"state": "running"}, 1},
		{"loom_coordinator_workers", map[string]string{"state": "live"}, 1},
		{"loom_job_generation", map[string]string{"job": sub.Job.Id}, 1},
		{"loom_coordinator_events_total", map[string]string{"kind": "plan"}, 1},
		{"loom_coordinator_events_total", map[string]string{"kind": "submitted"}, 1},
	} {
		if v := value(check.name, check.labels); v < check.min {
			t.Errorf("%s%v = %g, want >= %g", check.name, check.labels, v, check.min)
		}
	}
	if v := value("loom_coordinator_jobs", map[string]string{"state": "completed"}); v != 0 {
		t.Errorf("completed jobs %g", v)
	}
}

func metricValue(m *dto.Metric) float64 {
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}
