package coordinator

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// applyTimed applies m at index i as appended by the leader at time at.
func applyTimed(t *testing.T, f *FSM, i uint64, at time.Time, m proto.Message) ApplyResult {
	t.Helper()
	b, err := EncodeCommand(m)
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: b, AppendedAt: at}).(ApplyResult)
}

// The event log records what happened to a job, in order, stamped with
// the Raft index and the leader's append time; a job's view holds the
// cluster's leader changes during its life and no other job's events.
func TestEventLog(t *testing.T) {
	f := NewFSM(zap.NewNop())
	t0 := time.Unix(1000, 0)
	prof := &api.DeviceProfile{DeviceName: "cpu(2 threads)", CollectiveAddr: "127.0.0.1:1"}
	cmds := []proto.Message{
		&api.CmdLeaderElected{NodeId: "n0", Term: 1}, // before the job: not in its view
		&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "a", GlobalBatch: 8}, NowUnixNano: t0.Add(2 * time.Second).UnixNano()},
		&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "other", GlobalBatch: 8}},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w1", Profile: prof, JobId: "job-0001"}},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w2", Profile: prof, JobId: "job-0001"}},
		&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1, Reason: "2 workers", Ranks: []*api.Rank{{WorkerId: "w1", BatchShare: 5}, {Rank: 1, WorkerId: "w2", BatchShare: 3}}}},
		&api.CmdLeaderElected{NodeId: "n1", Term: 2},
		&api.CmdRemoveWorker{WorkerId: "w2", Reason: "w1 reported generation 1 failed", LostUnixNano: 1},
		&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 5, Path: "/ck/5", ManifestSha256: "ab"}},
		&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 6}, Failure: "disk full"},
		&api.CmdDrainWorker{WorkerId: "w1"},
	}
	for i, c := range cmds {
		if r := applyTimed(t, f, uint64(i+1), t0.Add(time.Duration(i)*time.Second), c); r.Err != nil {
			t.Fatalf("command %d: %v", i, r.Err)
		}
	}
	es, dropped := f.Events("job-0001", 0)
	var kinds []string
	for _, e := range es {
		kinds = append(kinds, e.GetKind())
	}
	want := "submitted worker_joined worker_joined plan leader worker_lost checkpoint checkpoint_failed worker_draining"
	if got := strings.Join(kinds, " "); got != want || dropped != 0 {
		t.Fatalf("events %q (dropped %d), want %q", got, dropped, want)
	}
	if e := es[0]; e.GetIndex() != 2 || e.GetUnixNano() != t0.Add(time.Second).UnixNano() {
		t.Fatalf("submitted event index %d at %d", e.GetIndex(), e.GetUnixNano())
	}
	for _, check := range []struct {
		i    int
		want string
	}{{3, "generation 1: 2 ranks (w1 5, w2 3): 2 workers"}, {4, "n1 became leader (term 2)"}, {5, "w2 lost: w1 reported generation 1 failed"}, {7, "disk full"}} {
		if !strings.Contains(es[check.i].GetMessage(), check.want) {
			t.Errorf("event %d %q lacks %q", check.i, es[check.i].GetMessage(), check.want)
		}
	}
	// Follow: only events after an index.
	if later, _ := f.Events("job-0001", es[5].GetIndex()); len(later) != 3 {
		t.Fatalf("after index %d: %d events, want 3", es[5].GetIndex(), len(later))
	}
	if all, _ := f.Events("", 0); len(all) != len(cmds) {
		t.Fatalf("the whole log has %d events, want %d", len(all), len(cmds))
	}
}

// A job's progress history stays bounded however long it runs: pairs of
// points merge as it fills, the points stay evenly spaced and keep the
// mean of the losses they stand for, and the newest step is always there.
func TestHistoryIsBounded(t *testing.T) {
	f := NewFSM(zap.NewNop())
	prof := &api.DeviceProfile{DeviceName: "cpu", CollectiveAddr: "127.0.0.1:1"}
	i := uint64(0)
	apply := func(m proto.Message) {
		t.Helper()
		i++
		if r := applyTimed(t, f, i, time.Unix(0, int64(i)), m); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	apply(&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "long", GlobalBatch: 8}})
	apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w1", Profile: prof, JobId: "job-0001"}})
	apply(&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1, Ranks: []*api.Rank{{WorkerId: "w1", BatchShare: 8}}}})
	const steps = 100_000
	for s := 1; s <= steps; s++ {
		r := &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: int64(s), Loss: float64(s)}
		if s%1000 == 0 {
			acc := 0.5
			r.TestAccuracy, r.TestLoss = &acc, 1
		}
		apply(&api.CmdReportProgress{Report: r, SamplesPerSecond: 100})
	}
	h := f.History("job-0001")
	n := len(h.GetPoints())
	if n > maxHistoryPoints || n < maxHistoryPoints/4 {
		t.Fatalf("%d points for %d steps, want at most %d and not far fewer", n, steps, maxHistoryPoints)
	}
	stride := h.GetStride()
	for k, p := range h.GetPoints() {
		// Point k stands for steps (k*stride, (k+1)*stride]: its loss is
		// their mean, its step the last.
		wantStep := int64(k+1) * stride
		wantLoss := float64(wantStep) - float64(stride-1)/2
		if p.GetStep() != wantStep || math.Abs(p.GetLoss()-wantLoss) > 1e-9 || p.GetSamplesPerSecond() != 100 {
			t.Fatalf("point %d (stride %d): step %d loss %g speed %g, want step %d loss %g", k, stride, p.GetStep(), p.GetLoss(), p.GetSamplesPerSecond(), wantStep, wantLoss)
		}
	}
	if last := h.GetPoints()[n-1].GetStep(); steps-last >= stride || last+h.GetPendingReports() != steps {
		t.Fatalf("history ends at step %d with %d reports pending, want %d", last, h.GetPendingReports(), steps)
	}
	if len(h.GetEvals()) != steps/1000 || len(h.GetWorkerSpeeds()) > maxHistoryPoints {
		t.Fatalf("%d evaluations (want %d), %d speed points", len(h.GetEvals()), steps/1000, len(h.GetWorkerSpeeds()))
	}
	// The history survives a snapshot.
	g := NewFSM(zap.NewNop())
	g.st = stateFromProto(f.st.toProto())
	if !proto.Equal(g.History("job-0001"), h) {
		t.Fatal("history differs after a snapshot round trip")
	}
}

// Two workers reporting in turn both keep evenly spaced speed lines to the
// end; a retried evaluation is recorded once; the job's last reports are
// in its history when it completes; leader changes after a job ended are
// not in its events.
func TestHistoryOfWorkersAndEnd(t *testing.T) {
	f := NewFSM(zap.NewNop())
	prof := &api.DeviceProfile{DeviceName: "cpu", CollectiveAddr: "127.0.0.1:1"}
	i := uint64(0)
	apply := func(m proto.Message) {
		t.Helper()
		i++
		if r := applyTimed(t, f, i, time.Unix(0, int64(i)), m); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	apply(&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "two", GlobalBatch: 8}})
	for _, w := range []string{"w0", "w1"} {
		apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: w, Profile: prof, JobId: "job-0001"}})
	}
	apply(&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1, Ranks: []*api.Rank{{WorkerId: "w0", BatchShare: 4}, {Rank: 1, WorkerId: "w1", BatchShare: 4}}}})
	const steps = 20_001
	for s := 1; s <= steps; s++ {
		r := &api.ReportProgressRequest{JobId: "job-0001", WorkerId: []string{"w0", "w1"}[s%2], Generation: 1, Step: int64(s), Loss: 1}
		if s == 500 {
			acc := 0.5
			r.TestAccuracy, r.TestLoss = &acc, 1
			apply(&api.CmdReportProgress{Report: proto.CloneOf(r), SamplesPerSecond: 10}) // a retried report
		}
		apply(&api.CmdReportProgress{Report: r, SamplesPerSecond: 10})
	}
	h := f.History("job-0001")
	last := map[string]int{}
	count := map[string]int{}
	for k, p := range h.GetWorkerSpeeds() {
		last[p.GetWorkerId()] = k
		count[p.GetWorkerId()]++
	}
	n := len(h.GetWorkerSpeeds())
	if count["w0"] < n/3 || count["w1"] < n/3 || last["w0"] < n-3 || last["w1"] < n-3 {
		t.Fatalf("speed points per worker %v (of %d), last at %v", count, n, last)
	}
	if len(h.GetEvals()) != 1 {
		t.Fatalf("%d evaluations recorded for one (retried) evaluation", len(h.GetEvals()))
	}
	if es, _ := f.Events("job-0001", 0); len(es) != 5 { // submitted, 2 joined, plan, 1 eval
		t.Fatalf("%d events: %v", len(es), es)
	}
	acc := 0.9
	apply(&api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w0", Step: steps, Done: true, TestAccuracy: &acc, TestLoss: 0.5}})
	h = f.History("job-0001")
	if p := h.GetPoints(); h.GetPendingReports() != 0 || p[len(p)-1].GetStep() != steps {
		t.Fatalf("history ends at step %d with %d reports pending, want %d", p[len(p)-1].GetStep(), h.GetPendingReports(), steps)
	}
	apply(&api.CmdLeaderElected{NodeId: "n2", Term: 9})
	es, _ := f.Events("job-0001", 0)
	if k := es[len(es)-1].GetKind(); k != "completed" {
		t.Fatalf("last event of the ended job is %q", k)
	}
}

// Ended jobs keep their histories up to a bound; the oldest go first.
func TestEndedHistoriesArePruned(t *testing.T) {
	f := NewFSM(zap.NewNop())
	i := uint64(0)
	for n := 1; n <= maxEndedHistories+5; n++ {
		i++
		applyTimed(t, f, i, time.Unix(0, int64(i)), &api.CmdSubmitJob{Spec: &api.JobSpec{Name: "j", GlobalBatch: 8}, NowUnixNano: int64(n)})
		f.st.history(fmt.Sprintf("job-%04d", n))
		i++
		applyTimed(t, f, i, time.Unix(0, int64(i)), &api.CmdCancelJob{JobId: fmt.Sprintf("job-%04d", n), Reason: "x"})
	}
	if got := len(f.st.histories); got != maxEndedHistories+1 { // pruned at each submit, the last one added after
		t.Fatalf("%d histories kept, want %d", got, maxEndedHistories+1)
	}
	if _, ok := f.st.histories["job-0001"]; ok {
		t.Fatal("the oldest job's history was kept")
	}
}
