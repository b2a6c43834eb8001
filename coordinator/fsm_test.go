package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// applyAt applies one command to f at log index i, returning its result.
func applyAt(t *testing.T, f *FSM, i uint64, m proto.Message) ApplyResult {
	t.Helper()
	b, err := EncodeCommand(m)
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: b}).(ApplyResult)
}

// everyCommand is a log exercising every command type at least once, each
// accepted. The test below checks it covers cmdTypes.
func everyCommand() []proto.Message {
	prof := func(addr string) *api.DeviceProfile {
		return &api.DeviceProfile{DeviceName: "cpu", Cores: 2, Threads: 4, Gflops: map[string]float64{"f32": 50, "bf16": 90}, MemoryBytes: 1 << 30, CollectiveAddr: addr}
	}
	return []proto.Message{
		&api.CmdInitCluster{ClusterId: "c1"},
		&api.CmdPutCoordinator{Member: &api.CoordinatorMember{Id: "n1", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"}},
		&api.CmdPutCoordinator{Member: &api.CoordinatorMember{Id: "n2", RaftAddr: "127.0.0.1:3", GrpcAddr: "127.0.0.1:4"}},
		&api.CmdRemoveCoordinator{NodeId: "n2"},
		&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "mnist", ConfigYaml: []byte("model: mlp\n"), GlobalBatch: 64, MaxWorkers: 4}, NowUnixNano: 100, RequestId: "r1"},
		&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "gone", GlobalBatch: 8}, NowUnixNano: 101},
		&api.CmdCancelJob{JobId: "job-0002", Reason: "test"},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w1", Profile: prof("127.0.0.1:9001"), LeaseExpiryUnixNano: 1000, RegisteredUnixNano: 10}},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w2", Profile: prof("127.0.0.1:9002"), JobId: "job-0001", LeaseExpiryUnixNano: 1000}},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w3", Profile: prof("127.0.0.1:9003"), LeaseExpiryUnixNano: 1000}},
		&api.CmdHeartbeat{WorkerId: "w1", LeaseExpiryUnixNano: 5000},
		&api.CmdRemoveWorker{WorkerId: "w3", Reason: "lease expired", LostUnixNano: 4000},
		&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w4", Profile: prof("127.0.0.1:9004"), LeaseExpiryUnixNano: 1000}},
		&api.CmdDrainWorker{WorkerId: "w4"},
		&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1, PipelineStages: 1, Replicas: 2, GlobalBatch: 64, Ranks: []*api.Rank{
			{Rank: 0, WorkerId: "w1", CollectiveAddr: "127.0.0.1:9001", BatchShare: 40},
			{Rank: 1, WorkerId: "w2", CollectiveAddr: "127.0.0.1:9002", BatchShare: 24, Replica: 1},
		}}},
		&api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: 7, Loss: 0.5, Samples: 40, StepSeconds: 0.1}, SamplesPerSecond: 400},
		// A batch applies each report as its own; the stale one (generation
		// 0) is skipped and does not move the step to 9.
		&api.CmdReportProgressBatch{Reports: []*api.CmdReportProgress{
			{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w2", Generation: 0, Step: 9, Loss: 9}},
			{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w2", Generation: 1, Step: 6, Loss: 0.6}},
		}},
		&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 7, Path: "/ck/7", ManifestSha256: "ab"}, NowUnixNano: 200},
		&api.CmdLeaderElected{NodeId: "n1", Term: 3},
	}
}

func TestSnapshotRestoreEveryCommand(t *testing.T) {
	f := NewFSM(zap.NewNop())
	seen := map[CmdType]bool{}
	for i, m := range everyCommand() {
		if r := applyAt(t, f, uint64(i+1), m); r.Err != nil {
			t.Fatalf("entry %d %T refused: %v", i+1, m, r.Err)
		}
		typ, _ := typeOf(m)
		seen[typ] = true
	}
	for typ := range cmdTypes {
		if !seen[typ] {
			t.Errorf("command %s not exercised by the snapshot test", typ)
		}
	}
	want := f.State()
	// The state reflects every command.
	if want.ClusterId != "c1" || len(want.Coordinators) != 1 || len(want.Jobs) != 2 || len(want.Workers) != 3 || len(want.Plans) != 1 ||
		len(want.LostWorkers) != 1 || want.LostWorkers[0].LostUnixNano != 4000 {
		t.Fatalf("unexpected state %v", want)
	}
	j, _ := f.Job("job-0001")
	if j.Step != 7 || j.Generation != 1 || j.State != api.JobState_JOB_STATE_RUNNING || len(j.Checkpoints) != 1 || j.Checkpoints[0].CommittedUnixNano != 200 {
		t.Fatalf("job after log: %v", j)
	}
	if w, _ := f.Worker("w1"); w.LeaseExpiryUnixNano != 5000 || w.SamplesPerSecond != 400 {
		t.Fatalf("worker after log: %v", w)
	}
	if w, _ := f.Worker("w4"); !w.Draining {
		t.Fatalf("w4 not draining: %v", w)
	}
	if j2, _ := f.Job("job-0002"); j2.State != api.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("job-0002 not cancelled: %v", j2)
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(zap.NewNop())
	changed := g.Changed()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Restore did not notify watchers")
	}
	if got := g.State(); !proto.Equal(got, want) {
		t.Fatalf("restored state differs:\n got %v\nwant %v", got, want)
	}
	// The restored FSM keeps counting job ids where the original stopped.
	r := applyAt(t, g, 100, &api.CmdSubmitJob{Spec: &api.JobSpec{Name: "next", GlobalBatch: 1}})
	if r.Err != nil || r.Msg.(*api.Job).Id != "job-0003" {
		t.Fatalf("submit after restore: %v %v", r.Msg, r.Err)
	}
	// Snapshots are deterministic: same state, same bytes.
	snap2, _ := f.Snapshot()
	sink2 := &memSink{}
	_ = snap2.Persist(sink2)
	if !bytes.Equal(sink.Bytes(), sink2.Bytes()) {
		t.Fatal("two snapshots of one state differ")
	}
	// Garbage is refused by name.
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte("nope")))); err == nil {
		t.Fatal("restore of garbage succeeded")
	}
}

func TestApplyRefusals(t *testing.T) {
	f := NewFSM(zap.NewNop())
	log := everyCommand()
	for i, m := range log {
		applyAt(t, f, uint64(i+1), m)
	}
	before := f.State()
	cases := []struct {
		cmd  proto.Message
		want error
	}{
		{&api.CmdInitCluster{ClusterId: "other"}, ErrClusterIDMismatch},
		{&api.CmdHeartbeat{WorkerId: "w1", Incarnation: 12345}, ErrSuperseded},
		{&api.CmdRemoveWorker{WorkerId: "w1", Incarnation: 12345}, ErrSuperseded},
		{&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w9", JobId: "job-0009"}}, ErrUnknownJob},
		{&api.CmdRegisterWorker{Worker: &api.Worker{Id: "w9", JobId: "job-0002"}}, ErrJobCancelled},
		{&api.CmdHeartbeat{WorkerId: "w3"}, ErrUnknownWorker},
		{&api.CmdRemoveWorker{WorkerId: "nobody"}, ErrUnknownWorker},
		{&api.CmdDrainWorker{WorkerId: "w3"}, ErrUnknownWorker},
		{&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 1}}, ErrStaleGeneration},
		{&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 3}}, ErrStaleGeneration},
		{&api.CmdPutPlan{Plan: &api.Plan{JobId: "job-0001", Generation: 2, Ranks: []*api.Rank{{WorkerId: "w3"}}}}, ErrUnknownWorker},
		{&api.CmdPutPlan{Plan: &api.Plan{JobId: "nope", Generation: 1}}, ErrUnknownJob},
		{&api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 0}}, ErrStaleGeneration},
		{&api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w3", Generation: 1}}, ErrNotInPlan},
		{&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 5, Path: "/ck/5", ManifestSha256: "cd"}}, ErrStaleCheckpoint},
		{&api.CmdCommitCheckpoint{Checkpoint: &api.Checkpoint{JobId: "job-0001", Step: 9}}, ErrInvalidArgument},
		{&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "x", GlobalBatch: 0}}, ErrInvalidArgument},
		{&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "x", GlobalBatch: 8, MinWorkers: 3, MaxWorkers: 2}}, ErrInvalidArgument},
		{&api.CmdRemoveCoordinator{NodeId: "n9"}, ErrUnknownNode},
	}
	for i, c := range cases {
		r := applyAt(t, f, uint64(100+i), c.cmd)
		if !errors.Is(r.Err, c.want) {
			t.Errorf("%T %v: err %v, want %v", c.cmd, c.cmd, r.Err, c.want)
		}
	}
	after := f.State()
	if !proto.Equal(before, after) {
		t.Fatalf("refused commands changed the state:\n%v\n%v", before, after)
	}
	// A retried checkpoint commit is accepted without a duplicate.
	r := applyAt(t, f, 200, log[len(log)-1])
	if j, _ := f.Job("job-0001"); r.Err != nil || len(j.Checkpoints) != 1 {
		t.Fatalf("retried commit: %v, %d checkpoints", r.Err, len(j.Checkpoints))
	}
}

func TestDecodeRefusesUnknown(t *testing.T) {
	if _, _, err := DecodeCommand([]byte{200, 1}); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, _, err := DecodeCommand([]byte{byte(CmdSubmitJob), 9}); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("future version: %v", err)
	}
	f := NewFSM(zap.NewNop())
	r := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{200, 1}}).(ApplyResult)
	if !errors.Is(r.Err, ErrUnknownCommand) {
		t.Fatalf("Apply of unknown: %v", r.Err)
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

// TestJobCompletion: a final report completes the job once; later reports
// and registrations are refused with JOB_COMPLETED; a second final report
// from another rank is a harmless no-op.
func TestJobCompletion(t *testing.T) {
	f := NewFSM(zap.NewNop())
	for i, m := range everyCommand() {
		applyAt(t, f, uint64(i+1), m)
	}
	// A second speed measurement is smoothed, not taken as is.
	applyAt(t, f, 49, &api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: 7}, SamplesPerSecond: 800})
	if w, _ := f.Worker("w1"); w.SamplesPerSecond != 500 {
		t.Fatalf("speed after 400 then 800 samples/s: %v, want 500", w.SamplesPerSecond)
	}
	acc := 0.97
	r := applyAt(t, f, 50, &api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: 8, Loss: 0.2, TestAccuracy: &acc, TestLoss: 0.1}})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	r = applyAt(t, f, 51, &api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w2", Step: 9, Done: true}, NowUnixNano: 777})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	j, _ := f.Job("job-0001")
	if j.State != api.JobState_JOB_STATE_COMPLETED || j.Step != 9 || j.TestAccuracy != acc || j.TestLoss != 0.1 || j.CompletedUnixNano != 777 {
		t.Fatalf("job after final report: %v", j)
	}
	if r := applyAt(t, f, 52, &api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Done: true}}); r.Err != nil {
		t.Fatalf("second final report: %v", r.Err)
	}
	if r := applyAt(t, f, 53, &api.CmdReportProgress{Report: &api.ReportProgressRequest{JobId: "job-0001", WorkerId: "w1", Generation: 1, Step: 10}}); !errors.Is(r.Err, ErrJobCompleted) {
		t.Fatalf("report after completion: %v", r.Err)
	}
	if r := applyAt(t, f, 54, &api.CmdRegisterWorker{Worker: &api.Worker{Id: "late", JobId: "job-0001"}}); !errors.Is(r.Err, ErrJobCompleted) {
		t.Fatalf("register to a completed job: %v", r.Err)
	}
	if r := applyAt(t, f, 55, &api.CmdCancelJob{JobId: "job-0001"}); r.Err != nil || r.Msg.(*api.Job).State != api.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("cancel after completion must leave it completed: %v %v", r.Msg, r.Err)
	}
	if len(desiredPlans(f.State(), 0.2)) != 0 {
		t.Fatal("planner plans for an ended job")
	}
}

// TestDrainAndLostWorkers: a draining worker is left out of every plan; a
// worker whose lease expired is listed as lost (a bounded list) until it
// registers again.
func TestDrainAndLostWorkers(t *testing.T) {
	f := NewFSM(zap.NewNop())
	idx := uint64(0)
	apply := func(m proto.Message) ApplyResult {
		t.Helper()
		idx++
		r := applyAt(t, f, idx, m)
		if r.Err != nil {
			t.Fatalf("%T: %v", m, r.Err)
		}
		return r
	}
	apply(&api.CmdSubmitJob{Spec: &api.JobSpec{Name: "j", GlobalBatch: 90}})
	for i := range 3 {
		apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: fmt.Sprintf("w%d", i),
			Profile: &api.DeviceProfile{CollectiveAddr: fmt.Sprintf("127.0.0.1:%d", 9000+i), Gflops: map[string]float64{"f32": 10}}}})
	}
	ranksOf := func() []string {
		t.Helper()
		ps := desiredPlans(f.State(), 0)
		if len(ps) != 1 {
			t.Fatalf("want one new plan, got %v", ps)
		}
		apply(&api.CmdPutPlan{Plan: ps[0]})
		var ids []string
		for _, r := range ps[0].GetRanks() {
			ids = append(ids, r.GetWorkerId())
		}
		return ids
	}
	if got := ranksOf(); len(got) != 3 {
		t.Fatalf("ranks %v", got)
	}
	apply(&api.CmdDrainWorker{WorkerId: "w1"})
	if got := ranksOf(); !slices.Equal(got, []string{"w0", "w2"}) {
		t.Fatalf("ranks after draining w1: %v", got)
	}
	apply(&api.CmdRemoveWorker{WorkerId: "w1", Reason: "deregistered"})
	if len(f.LostWorkers()) != 0 {
		t.Fatal("a deregistered worker is listed as lost")
	}
	for i := range maxLost + 5 {
		id := fmt.Sprintf("x%d", i)
		apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: id, Profile: &api.DeviceProfile{CollectiveAddr: "127.0.0.1:1"}}})
		apply(&api.CmdRemoveWorker{WorkerId: id, Reason: "lease expired", LostUnixNano: int64(i + 1)})
	}
	lost := f.LostWorkers()
	if len(lost) != maxLost || lost[0].GetId() != "x5" || lost[len(lost)-1].GetLostUnixNano() != maxLost+5 {
		t.Fatalf("lost list: %d entries, first %v", len(lost), lost[0])
	}
	apply(&api.CmdRegisterWorker{Worker: &api.Worker{Id: "x9", Profile: &api.DeviceProfile{CollectiveAddr: "127.0.0.1:2"}}})
	if slices.ContainsFunc(f.LostWorkers(), func(w *api.Worker) bool { return w.GetId() == "x9" }) {
		t.Fatal("a worker that registered again is still listed as lost")
	}
}

// TestRestartFromSnapshot: a node on disk takes a Raft snapshot (file
// snapshot store, raft-boltdb log), stops, and on restart restores the same
// state from the snapshot plus the log after it.
func TestRestartFromSnapshot(t *testing.T) {
	dir := t.TempDir()
	cfg := TestConfig(t, "coord-0")
	cfg.DataDir = dir
	cfg.SnapshotThreshold = 1 << 20 // only the explicit snapshot below
	ctx := ctxT(t, 30*time.Second)
	s, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "snap", GlobalBatch: 16}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w", Profile: profile("127.0.0.1:9400", 5)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { p, ok := s.FSM().Plan(sub.Job.Id); return ok && len(p.Ranks) == 1 })
	if err := s.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	// One more entry after the snapshot: restored from the log tail.
	if _, err := c.CommitCheckpoint(ctx, &api.CommitCheckpointRequest{Checkpoint: &api.Checkpoint{JobId: sub.Job.Id, Step: 1, Path: "snap/step-00000001", ManifestSha256: "s"}}); err != nil {
		t.Fatal(err)
	}
	want := s.FSM().State()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.Bootstrap = false
	s2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	got := s2.FSM().State()
	// The restarted leader re-records its (new) gRPC address and may log
	// its election; compare the rest.
	got.Coordinators, want.Coordinators = nil, nil
	if len(got.Events) > len(want.Events) {
		for _, e := range got.Events[len(want.Events):] {
			if e.GetKind() != "leader" {
				t.Fatalf("event after restart: %v", e)
			}
		}
		got.Events = got.Events[:len(want.Events)]
	}
	if !proto.Equal(got, want) {
		t.Fatalf("state after restart differs:\n got %v\nwant %v", got, want)
	}
}

// A job with equal_shares splits its batch evenly whatever the speeds; a
// default job splits it in proportion to them.
func TestEqualSharesJob(t *testing.T) {
	for _, equal := range []bool{false, true} {
		f := NewFSM(zap.NewNop())
		applyAt(t, f, 1, &api.CmdSubmitJob{Spec: &api.JobSpec{Name: "j", GlobalBatch: 90, EqualShares: equal}})
		for i, g := range []float64{20, 10} {
			applyAt(t, f, uint64(2+i), &api.CmdRegisterWorker{Worker: &api.Worker{Id: fmt.Sprintf("w%d", i),
				Profile: &api.DeviceProfile{CollectiveAddr: fmt.Sprintf("127.0.0.1:%d", 9000+i), Gflops: map[string]float64{"f32": g}}}})
		}
		ps := desiredPlans(f.State(), 0)
		if len(ps) != 1 || len(ps[0].GetRanks()) != 2 {
			t.Fatalf("plans %v", ps)
		}
		shares := map[string]int64{}
		for _, r := range ps[0].GetRanks() {
			shares[r.GetWorkerId()] = r.GetBatchShare()
		}
		want := map[string]int64{"w0": 60, "w1": 30}
		if equal {
			want = map[string]int64{"w0": 45, "w1": 45}
		}
		if shares["w0"] != want["w0"] || shares["w1"] != want["w1"] {
			t.Fatalf("equal_shares=%v: shares %v, want %v", equal, shares, want)
		}
	}
}

// GenerationOf, what every heartbeat answers: a pinned worker's job, or the
// unended job whose plan names the worker; 0 for a worker in no plan.
func TestGenerationOf(t *testing.T) {
	f := NewFSM(zap.NewNop())
	for i, m := range everyCommand() {
		if r := applyAt(t, f, uint64(i+1), m); r.Err != nil {
			t.Fatalf("entry %d %T refused: %v", i+1, m, r.Err)
		}
	}
	j, _ := f.Job("job-0001")
	for _, c := range []struct {
		worker, job string
		want        int64
	}{
		{"w1", "", 1},                         // named by job-0001's plan
		{"w2", "job-0001", j.GetGeneration()}, // pinned
		{"w4", "", 0},                         // in no plan
		{"w1", "job-0002", 0},                 // pinned to a cancelled job that never planned
	} {
		if got := f.GenerationOf(c.worker, c.job); got != c.want {
			t.Errorf("GenerationOf(%s, %q) = %d, want %d", c.worker, c.job, got, c.want)
		}
	}
	applyAt(t, f, 100, &api.CmdCancelJob{JobId: "job-0001", Reason: "done"})
	if got := f.GenerationOf("w1", ""); got != 0 {
		t.Errorf("a worker named only by an ended job's plan: generation %d, want 0", got)
	}
}
