package coordinator

import (
	"testing"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// A plan watch wakes on its own job's new generation or end, and on
// nothing else: not on a progress report, not on another job's plan, not on
// a registration. Every watcher reads the same plan, with no copy each.
func TestPlanSignalWakesOnlyItsJob(t *testing.T) {
	f := NewFSM(zap.NewNop())
	cmds := everyCommand()
	for i, m := range cmds {
		applyAt(t, f, uint64(i+1), m)
	}
	i := uint64(len(cmds))
	apply := func(m proto.Message) ApplyResult {
		i++
		return applyAt(t, f, i, m)
	}
	p1, ended, ch, ok := f.planView("job-0001")
	p2, _, ch2, _ := f.planView("job-0001")
	if !ok || ended || p1.GetGeneration() != 1 || ch == nil {
		t.Fatalf("planView: plan %v ended %v ok %v", p1, ended, ok)
	}
	if p1 != p2 || ch != ch2 {
		t.Fatal("two watchers of one job got different plans or signals: a copy each")
	}
	if r := apply(&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "other", GlobalBatch: 8}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	for _, m := range []proto.Message{
		&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0003", Generation: 1, PipelineStages: 1, Replicas: 1, GlobalBatch: 8,
			Ranks: []*api.Rank{{WorkerId: "w1", BatchShare: 8}}}},
		&api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: 8, Loss: 0.4}},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w9", Profile: &api.DeviceProfile{CollectiveAddr: "127.0.0.1:9009"}}},
		&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 8, Path: "/ck/8", ManifestSha256: "cd"}},
	} {
		if r := apply(m); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	select {
	case <-ch:
		t.Fatal("job-0001's watchers woke for a change that is not its plan")
	default:
	}
	if r := apply(&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 2, PipelineStages: 1, Replicas: 1, GlobalBatch: 64,
		Ranks: []*api.Rank{{WorkerId: "w2", BatchShare: 64}}}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("a new generation did not wake job-0001's watchers")
	}
	p, _, ch, _ := f.planView("job-0001")
	if p.GetGeneration() != 2 || p == p1 {
		t.Fatalf("after generation 2 the watcher reads %v", p)
	}
	if r := apply(&api.CmdCancelJob{JobId: "job-0001", Reason: "test"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("the job's end did not wake its watchers")
	}
	if _, ended, next, ok := f.planView("job-0001"); !ok || !ended || next != nil {
		t.Fatalf("ended job: ended %v next %v ok %v", ended, next, ok)
	}
	if _, _, _, ok := f.planView("job-9999"); ok {
		t.Fatal("planView of an unknown job")
	}
}
