package coordinator

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/loomtrain/loom/api"
)

// settled waits until the leader's log has stopped growing for quiet and
// every node has applied all of it, and returns the leader's last index.
func settled(t *testing.T, tc *TestCluster, quiet time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		l := tc.Leader()
		idx := l.raft.LastIndex()
		time.Sleep(quiet)
		same := l.raft.LastIndex() == idx
		for _, n := range tc.Nodes {
			same = same && (n == nil || n.FSM().AppliedIndex() >= l.FSM().AppliedIndex())
		}
		if same {
			return idx
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log did not settle: index %d, now %d", idx, l.raft.LastIndex())
		}
	}
}

// heartbeater heartbeats worker id every interval through c until stopped,
// recording when its last heartbeat was sent and whether any failed with
// a refusal (not a transient error).
type heartbeater struct {
	mu       sync.Mutex
	lastSent time.Time
	ok       int
	refused  error
	stop     context.CancelFunc
	done     chan struct{}
}

func startHeartbeats(ctx context.Context, c api.CoordinatorClient, id string, inc int64, every time.Duration) *heartbeater {
	ctx, stop := context.WithCancel(ctx)
	h := &heartbeater{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for ctx.Err() == nil {
			sent := time.Now()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.Heartbeat(cctx, &api.HeartbeatRequest{WorkerId: id, Incarnation: inc})
			cancel()
			h.mu.Lock()
			if err == nil {
				h.lastSent = sent
				h.ok++
			} else if api.ReasonOf(err) == api.ReasonUnknownWorker || api.ReasonOf(err) == api.ReasonSuperseded {
				h.refused = err
			}
			h.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
	return h
}

// count is how many heartbeats have been answered so far.
func (h *heartbeater) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ok
}

// halt stops the heartbeats and returns when the last successful one was
// sent, how many succeeded, and the refusal seen, if any.
func (h *heartbeater) halt() (time.Time, int, error) {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastSent, h.ok, h.refused
}

func register(ctx context.Context, t *testing.T, c api.CoordinatorClient, id, job string, port int) *api.Worker {
	t.Helper()
	r, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: id, JobId: job, Profile: profile(fmt.Sprintf("127.0.0.1:%d", port), 10)})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return r.GetWorker()
}

// TestHeartbeatsWriteNoEntries: in a 3-node cluster, live workers
// heartbeating for four leases, through the leader and through a follower
// (which forwards), add no Raft entry: the log index stands still and no
// node applies anything. Every heartbeat is answered by the leader with a
// lease that runs a TTL from then, and ListWorkers on a follower shows the
// leader's live leases.
func TestHeartbeatsWriteNoEntries(t *testing.T) {
	const ttl = 600 * time.Millisecond
	tc := NewTestCluster(t, 3, func(c *Config) { c.LeaseTTL = ttl })
	ctx := ctxT(t, 60*time.Second)
	leader := tc.Leader()
	var follower *Server
	for _, n := range tc.Nodes {
		if n != leader {
			follower = n
		}
	}
	lc := api.NewCoordinatorClient(Dial(t, leader.Addr()))
	fc := api.NewCoordinatorClient(Dial(t, follower.Addr()))
	sub, err := fc.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "quiet", GlobalBatch: 60, MinWorkers: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var hbs []*heartbeater
	for i := range 6 {
		c := lc
		if i%2 == 1 {
			c = fc
		}
		w := register(ctx, t, c, fmt.Sprintf("w%d", i), "", 9700+i)
		hbs = append(hbs, startHeartbeats(ctx, c, w.GetId(), w.GetRegisteredUnixNano(), ttl/3))
	}
	WaitRanks(ctx, t, lc, sub.GetJob().GetId(), 6)
	idx := settled(t, tc, 200*time.Millisecond)
	counts := map[*Server]map[string]uint64{}
	for _, n := range tc.Nodes {
		counts[n] = n.FSM().AppliedEntries()
	}
	beats, sentBefore := leader.Heartbeats(), 0
	for _, h := range hbs {
		sentBefore += h.count()
	}

	time.Sleep(4 * ttl)
	ws, err := fc.ListWorkers(ctx, &api.ListWorkersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sent := -sentBefore
	for i, h := range hbs {
		_, ok, refused := h.halt()
		if refused != nil || ok < 8 {
			t.Errorf("w%d: %d heartbeats answered in four leases, refusal %v", i, ok, refused)
		}
		sent += ok
	}
	if got := leader.raft.LastIndex(); got != idx {
		t.Errorf("the log grew from index %d to %d while workers only heartbeated", idx, got)
	}
	for _, n := range tc.Nodes {
		if got := n.FSM().AppliedEntries(); !maps.Equal(got, counts[n]) {
			t.Errorf("%s applied entries while workers only heartbeated: %v, before %v", n.ID(), got, counts[n])
		}
	}
	// Every heartbeat reached the leader (those sent to the follower were
	// forwarded), allowing for the ones in flight at either end.
	if got := leader.Heartbeats() - beats; got+6 < uint64(sent) {
		t.Errorf("the leader answered %d heartbeats, %d were sent", got, sent)
	}
	if len(ws.GetWorkers()) != 6 {
		t.Fatalf("workers %v", ws.GetWorkers())
	}
	for _, w := range ws.GetWorkers() {
		// A live lease ends about a TTL after the last heartbeat; the one
		// registered ended 4 TTLs ago.
		if left := time.Unix(0, w.GetLeaseExpiryUnixNano()).Sub(now); left < ttl/3 || left > ttl {
			t.Errorf("%s: lease ends in %v as seen through a follower, want within (%v, %v]", w.GetId(), left, ttl/3, ttl)
		}
	}
}

// TestSilentWorkerExpiresOnce: a worker that stops heartbeating loses its
// lease a TTL after its last heartbeat (plus at most the leader's check
// interval), in one Raft entry; its next heartbeat, through any node, is
// refused as unknown, and a heartbeat from a superseded incarnation is
// refused as such. The worker that goes on heartbeating keeps its lease.
func TestSilentWorkerExpiresOnce(t *testing.T) {
	const ttl = time.Second
	tc := NewTestCluster(t, 3, func(c *Config) { c.LeaseTTL = ttl })
	ctx := ctxT(t, 60*time.Second)
	c := api.NewCoordinatorClient(Dial(t, tc.Addrs()...))
	live := register(ctx, t, c, "live", "", 9750)
	silent := register(ctx, t, c, "silent", "", 9751)
	liveHB := startHeartbeats(ctx, c, live.GetId(), live.GetRegisteredUnixNano(), ttl/3)
	defer liveHB.halt()
	silentHB := startHeartbeats(ctx, c, silent.GetId(), silent.GetRegisteredUnixNano(), ttl/3)
	time.Sleep(ttl)
	idx := settled(t, tc, 100*time.Millisecond)
	leader := tc.Leader()
	before := leader.FSM().AppliedEntries()
	last, ok, refused := silentHB.halt()
	if ok < 2 || refused != nil {
		t.Fatalf("silent: %d heartbeats before going quiet, refusal %v", ok, refused)
	}
	silentAt := time.Now()

	waitFor(t, 3*ttl, func() bool { _, ok := leader.FSM().Worker("silent"); return !ok })
	lost := leader.FSM().LostWorkers()
	if len(lost) != 1 || lost[0].GetId() != "silent" {
		t.Fatalf("lost %v", lost)
	}
	// The leader decided at lost_unix_nano: not before a TTL after the
	// last heartbeat was sent, and no later than a TTL after it was
	// answered plus the check interval (and scheduling on a busy machine).
	at := time.Unix(0, lost[0].GetLostUnixNano())
	tick := max(ttl/10, 20*time.Millisecond)
	if at.Before(last.Add(ttl)) || at.After(silentAt.Add(ttl+tick+time.Second)) {
		t.Errorf("expired %v after the last heartbeat was sent, want within [%v, %v]", at.Sub(last), ttl, ttl+tick+time.Second)
	}
	// One command: the expiry (a leader election in between would add
	// Raft's own entries, not commands).
	after := leader.FSM().AppliedEntries()
	for kind, n := range after {
		if kind != "remove_worker" && n != before[kind] {
			t.Errorf("the expiry applied %d %s commands besides it (log from index %d to %d)", n-before[kind], kind, idx, leader.raft.LastIndex())
		}
	}
	if after["remove_worker"]-before["remove_worker"] != 1 {
		t.Errorf("remove_worker entries: %d before, %d after", before["remove_worker"], after["remove_worker"])
	}
	if _, ok := leader.FSM().Worker("live"); !ok {
		t.Fatal("the heartbeating worker lost its lease")
	}
	for _, n := range tc.Nodes {
		_, err := api.NewCoordinatorClient(Dial(t, n.Addr())).Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "silent", Incarnation: silent.GetRegisteredUnixNano()})
		wantReason(t, err, codes.NotFound, api.ReasonUnknownWorker)
		_, err = api.NewCoordinatorClient(Dial(t, n.Addr())).Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "live", Incarnation: live.GetRegisteredUnixNano() - 1})
		wantReason(t, err, codes.FailedPrecondition, api.ReasonSuperseded)
	}
}

// TestFailoverKeepsLiveLeases: the leader of a 3-node cluster stops while
// a job runs on two workers, one of which went silent just before. The new
// leader starts every lease afresh: the worker that heartbeats on keeps
// its lease and its place in the plan; the silent one expires a lease
// after the new leader took office (not earlier, though its lease on the
// old leader had run out by then, and not much later).
func TestFailoverKeepsLiveLeases(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	tc := NewTestCluster(t, 3, func(c *Config) { c.LeaseTTL = ttl })
	ctx := ctxT(t, 60*time.Second)
	c := api.NewCoordinatorClient(Dial(t, tc.Addrs()...))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "survive", GlobalBatch: 60, MinWorkers: 1}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.GetJob().GetId()
	live := register(ctx, t, c, "live", job, 9760)
	silent := register(ctx, t, c, "silent", job, 9761)
	liveHB := startHeartbeats(ctx, c, live.GetId(), live.GetRegisteredUnixNano(), ttl/3)
	silentHB := startHeartbeats(ctx, c, silent.GetId(), silent.GetRegisteredUnixNano(), ttl/3)
	WaitRanks(ctx, t, c, job, 2)
	time.Sleep(ttl)

	old := tc.Leader()
	_, _, _ = silentHB.halt()
	stopped := time.Now()
	for i, n := range tc.Nodes {
		if n == old {
			tc.Stop(i)
		}
	}
	leader := tc.Leader()
	waitFor(t, 10*time.Second, func() bool { return !leader.leaderStart().IsZero() })
	since := leader.leaderStart()
	t.Logf("new leader %s in office %v after the old one began to stop", leader.ID(), since.Sub(stopped))

	waitFor(t, 3*ttl, func() bool { _, ok := leader.FSM().Worker("silent"); return !ok })
	lost := leader.FSM().LostWorkers()
	if len(lost) != 1 || lost[0].GetId() != "silent" {
		t.Fatalf("lost %v, want only the silent worker", lost)
	}
	tick := max(ttl/10, 20*time.Millisecond)
	if at := time.Unix(0, lost[0].GetLostUnixNano()).Sub(since); at < ttl || at > ttl+tick+time.Second {
		t.Errorf("silent worker expired %v after the new leader took office, want within [%v, %v]", at, ttl, ttl+tick+time.Second)
	}
	p := WaitRanks(ctx, t, c, job, 1)
	if p.GetRanks()[0].GetWorkerId() != "live" {
		t.Fatalf("plan after the failover: %v", p.GetRanks())
	}
	// Another lease later the live worker still holds its lease.
	time.Sleep(ttl)
	_, ok, refused := liveHB.halt()
	if refused != nil {
		t.Fatalf("live worker's heartbeat refused across the failover: %v", refused)
	}
	if _, reg := leader.FSM().Worker("live"); !reg || len(leader.FSM().LostWorkers()) != 1 {
		t.Fatalf("live worker registered %v, lost %v", reg, leader.FSM().LostWorkers())
	}
	if leader.Heartbeats() == 0 || ok == 0 {
		t.Fatalf("the new leader answered %d heartbeats (%d succeeded)", leader.Heartbeats(), ok)
	}
}

// A registration the log refuses (here: to a cancelled job) leaves the
// lease of its id as it was: it must not keep a dead holder of the id
// alive for another lease. One that the log accepts starts a lease.
func TestRefusedRegistrationRenewsNoLease(t *testing.T) {
	s := NewTestServer(t, nil)
	ctx := ctxT(t, 30*time.Second)
	c := api.NewCoordinatorClient(Dial(t, s.Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "gone", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CancelJob(ctx, &api.CancelJobRequest{JobId: sub.GetJob().GetId()}); err != nil {
		t.Fatal(err)
	}
	register(ctx, t, c, "w", "", 9801)
	held := s.live.lastSeen("w")
	if held.IsZero() {
		t.Fatal("an accepted registration started no lease")
	}
	time.Sleep(10 * time.Millisecond)
	_, err = c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w", JobId: sub.GetJob().GetId(), Profile: profile("127.0.0.1:9802", 10)})
	if api.ReasonOf(err) != api.ReasonJobCancelled {
		t.Fatalf("register to a cancelled job: %v", err)
	}
	if got := s.live.lastSeen("w"); !got.Equal(held) {
		t.Fatalf("the refused registration moved w's lease from %v to %v", held, got)
	}
	_, err = c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "nobody", JobId: sub.GetJob().GetId(), Profile: profile("127.0.0.1:9803", 10)})
	if err == nil || !s.live.lastSeen("nobody").IsZero() {
		t.Fatalf("a refused new id holds a lease (err %v)", err)
	}
}

// Off the leader nobody knows a live lease: ListWorkers answered from a
// follower's replica shows none, not the long-past one of registration.
// And the office start keeps its monotonic clock reading, so that leases
// measured against it do not move with the wall clock.
func TestLeasesOffTheLeader(t *testing.T) {
	var s Server
	ws := s.withLeases([]*api.Worker{{Id: "w", LeaseExpiryUnixNano: 12345}})
	if ws[0].GetLeaseExpiryUnixNano() != 0 {
		t.Fatalf("a node out of office answered lease %d", ws[0].GetLeaseExpiryUnixNano())
	}
	s.setLeaderStart(time.Now())
	if got := s.leaderStart(); got == got.Round(0) {
		t.Fatalf("office start %v lost its monotonic reading", got)
	}
	s.setLeaderStart(time.Time{})
	if !s.leaderStart().IsZero() {
		t.Fatal("out of office, the office start is not zero")
	}
}

// The log grows with time and change, not with the workers: ten times the
// workers, each heartbeating and reporting a step every 100 ms, write the
// same progress batches (one per ProgressInterval) and nothing per worker.
func TestLogGrowthFlatInWorkers(t *testing.T) {
	const interval = 200 * time.Millisecond
	tc := NewTestCluster(t, 3, func(c *Config) { c.ProgressInterval = interval; c.LeaseTTL = 2 * time.Second })
	ctx := ctxT(t, 90*time.Second)
	c := api.NewCoordinatorClient(Dial(t, tc.Leader().Addr()))
	sub, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "flat", GlobalBatch: 400, MinWorkers: 1}})
	if err != nil {
		t.Fatal(err)
	}
	job := sub.GetJob().GetId()
	var wg sync.WaitGroup
	wctx, stop := context.WithCancel(ctx)
	defer func() { stop(); wg.Wait() }()
	run := func(w *api.Worker) {
		wg.Go(func() {
			for step := int64(1); wctx.Err() == nil; step++ {
				_, _ = c.Heartbeat(wctx, &api.HeartbeatRequest{WorkerId: w.GetId(), Incarnation: w.GetRegisteredUnixNano()})
				gen := tc.Leader().FSM().GenerationOf(w.GetId(), job)
				_, _ = c.ReportProgress(wctx, &api.ReportProgressRequest{JobId: job, WorkerId: w.GetId(), Generation: gen, Step: step,
					Loss: 1, Samples: 10, StepSeconds: 0.1})
				select {
				case <-wctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}
	registered := 0
	grow := func(n int) (entries uint64, kinds map[string]uint64) {
		for ; registered < n; registered++ {
			i := registered
			run(register(ctx, t, c, fmt.Sprintf("w%03d", i), job, 9900+i))
		}
		WaitRanks(ctx, t, c, job, n)
		time.Sleep(time.Second) // the join's plans and the first speeds settle
		l := tc.Leader()
		idx, before := l.raft.LastIndex(), l.FSM().AppliedEntries()
		time.Sleep(3 * time.Second)
		kinds = l.FSM().AppliedEntries()
		for k, v := range before {
			kinds[k] -= v
			if kinds[k] == 0 {
				delete(kinds, k)
			}
		}
		return l.raft.LastIndex() - idx, kinds
	}
	few, fewKinds := grow(4)
	many, manyKinds := grow(40)
	t.Logf("3 s: %d entries with 4 workers %v, %d with 40 %v", few, fewKinds, many, manyKinds)
	// 15 batches in 3 s; a plan re-shared on a speed change may add one.
	if few < 10 || few > 18 || many > few+3 {
		t.Fatalf("3 s of steady work wrote %d entries with 4 workers and %d with 40: want about 15 each", few, many)
	}
	if manyKinds["heartbeat"] != 0 || manyKinds["report_progress"] != 0 {
		t.Fatalf("per-worker entries with 40 workers: %v", manyKinds)
	}
}
