package worker

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/train"
)

// generation is this worker's place in one plan generation: its rank, its
// batch share, and the communicator joining it to the other ranks.
type generation struct {
	plan   *api.Plan
	rank   int
	shares *train.Shares
	comm   *collective.Communicator
	sync   *train.RingSync
	// A pipeline plan's: this rank's place (comm and sync are then its
	// stage's ring, and shares its stage's) and the blocks its stage holds.
	pipeline *train.Pipeline
	layers   model.StageRange
	// pipe carries messages between any two ranks over the world's links:
	// a pipeline plan's activations and gradients, and the handover that
	// starts a pipeline job's generations (with or without stages; nil for
	// other jobs).
	pipe *collective.Pipe
}

// setupTimeout bounds how long ranks wait for each other to connect.
const setupTimeout = 15 * time.Second

// linkOpts are how a generation's ring links carry gradients.
type linkOpts struct {
	compress collective.Compression
	shmRing  int                 // shared-memory ring bytes per direction to same-host ranks; 0: TCP only
	observer collective.Observer // told of every all-reduce; nil: nothing
	tls      *tls.Config         // mutual TLS on every ring link; nil: plain TCP
	// handover: a Pipe over every rank even without pipeline stages, for
	// a pipeline job's generations, which start with a handover.
	handover bool
}

// joinGeneration connects to every rank of plan. ln, if non-nil, is the
// already-bound collective listener; otherwise listen is bound again. It
// returns nil, nil if this worker is not in the plan (ln is then left
// open); otherwise ln is consumed by the transport or closed.
func joinGeneration(ctx context.Context, plan *api.Plan, me string, ln net.Listener, listen string, opts linkOpts, log *zap.Logger) (_ *generation, err error) {
	defer func() {
		if err != nil && ln != nil {
			ln.Close()
		}
	}()
	ranks := append([]*api.Rank(nil), plan.GetRanks()...)
	sort.Slice(ranks, func(i, j int) bool { return ranks[i].GetRank() < ranks[j].GetRank() })
	g := &generation{plan: plan, rank: -1}
	peers := make([]string, len(ranks))
	for i, r := range ranks {
		if int(r.GetRank()) != i {
			return nil, fmt.Errorf("plan generation %d: ranks are not 0..%d", plan.GetGeneration(), len(ranks)-1)
		}
		peers[i] = r.GetCollectiveAddr()
		if r.GetWorkerId() == me {
			g.rank = i
		}
	}
	if g.rank < 0 {
		return nil, nil
	}
	// The ring is the ranks of this rank's stage (every rank, without
	// pipeline stages), in plan order.
	stage := int(ranks[g.rank].GetStage())
	var order, shares, members []int
	var stages [][]train.PipeRank
	for _, r := range plan.GetRanks() { // plan order is ring order
		s := int(r.GetStage())
		if s < 0 || s >= max(1, int(plan.GetPipelineStages())) {
			return nil, fmt.Errorf("plan generation %d: rank %d is in stage %d of %d", plan.GetGeneration(), r.GetRank(), s, plan.GetPipelineStages())
		}
		for len(stages) <= s {
			stages = append(stages, nil)
		}
		stages[s] = append(stages[s], train.PipeRank{Peer: int(r.GetRank()), Share: int(r.GetBatchShare())})
		if s != stage {
			continue
		}
		members = append(members, int(r.GetRank()))
		shares = append(shares, int(r.GetBatchShare()))
	}
	idx := slices.Index(members, g.rank)
	if g.shares, err = train.NewShares(shares, idx, int(plan.GetGlobalBatch())); err != nil {
		return nil, fmt.Errorf("plan generation %d: stage %d: %w", plan.GetGeneration(), stage, err)
	}
	pipelined := len(stages) > 1
	if pipelined {
		lays := plan.GetStageLayers()
		if len(lays) != len(stages) {
			return nil, fmt.Errorf("plan generation %d: %d stages but %d layer ranges", plan.GetGeneration(), len(stages), len(lays))
		}
		g.layers = model.StageRange{First: int(lays[stage].GetFirst()), Last: int(lays[stage].GetLast())}
		g.pipeline = &train.Pipeline{Stages: stages, Stage: stage, Me: idx}
	} else {
		order = members
	}
	if ln == nil && len(peers) > 1 {
		if ln, err = listenRetry(ctx, listen); err != nil {
			return nil, err
		}
	}
	tcfg := collective.DefaultTCPConfig()
	tcfg.Generation, tcfg.Rank, tcfg.Peers, tcfg.Listener, tcfg.Logger = uint64(plan.GetGeneration()), g.rank, peers, ln, log
	tcfg.ShmRingBytes, tcfg.TLS = opts.shmRing, opts.tls
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	tr, err := collective.NewTCPTransport(sctx, tcfg)
	ln = nil // owned by the transport from here on
	if err != nil {
		return nil, fmt.Errorf("generation %d: connect ranks: %w", plan.GetGeneration(), err)
	}
	ccfg := collective.DefaultConfig()
	ccfg.Generation, ccfg.Rank, ccfg.Order, ccfg.Compress, ccfg.Logger = uint64(plan.GetGeneration()), g.rank, order, opts.compress, log
	ccfg.Observer = opts.observer
	ring := collective.Transport(tr)
	if pipelined {
		// The stage's ring runs over its own ranks' links of the mesh, the
		// pipe over the links to the other stages: no link carries both.
		if ring, err = collective.Sub(tr, members); err != nil {
			tr.Close()
			return nil, err
		}
		ccfg.Rank = idx
	}
	if pipelined || opts.handover {
		g.pipe = collective.NewPipe(tr, collective.PipeConfig{Logger: log})
	}
	if pipelined {
		g.pipeline.Pipe = g.pipe
	}
	if g.comm, err = collective.New(ring, ccfg); err != nil {
		tr.Close()
		return nil, err
	}
	g.sync = train.NewRingSync(g.comm)
	return g, nil
}

// listenRetry binds addr again (the previous generation's transport closed
// it); the port can take a moment to be free.
func listenRetry(ctx context.Context, addr string) (net.Listener, error) {
	var lastErr error
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("listen %s: %w", addr, lastErr)
}

func (g *generation) close() {
	if g == nil {
		return
	}
	if g.pipe != nil {
		// A stage that finished the last step of the generation may still
		// have its last gradients and step result queued for the stage
		// before it, which is still receiving them: hand them to the links
		// before closing them.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = g.pipe.Flush(ctx)
		cancel()
	}
	g.sync.Close()
	g.comm.Close()
	if g.pipe != nil {
		g.pipe.Close()
	}
}

// gradSync is the step loop's GradSync: nil for a pipeline stage of one
// rank, which has nothing to sum.
func (g *generation) gradSync() train.GradSync {
	if g.pipeline != nil && g.comm.Size() == 1 {
		return nil
	}
	return g.sync
}

// world is the number of ranks of the generation.
func (g *generation) world() int {
	if g.pipeline != nil {
		return g.pipeline.World()
	}
	return g.comm.Size()
}

// stage is the rank's pipeline stage (0 without stages).
func (g *generation) stage() int {
	if g.pipeline != nil {
		return g.pipeline.Stage
	}
	return 0
}

// syncState makes every rank's training state equal at the start of a
// generation: the ranks exchange their step counts (a worker without state
// counts as -1) and, unless they already agree, the rank furthest ahead (the
// lowest such rank) broadcasts its weights, optimizer state, step, sampler
// position and loss scaler to the others. This is how a joining worker
// receives its state from a live peer, and how ranks that disagree after a
// failed step converge. hasState is false for a worker that has trained no
// step of this job yet and has not loaded state.
func (g *generation) syncState(ctx context.Context, t *train.Trainer, hasState bool) (src int, err error) {
	n := g.comm.Size()
	steps := make([]int, n)
	one := make([]float32, 1)
	for r := 0; r < n; r++ {
		mine := -1
		if hasState {
			mine = t.Steps()
		}
		one[0] = math.Float32frombits(uint32(int32(mine)))
		if err := g.comm.Broadcast(ctx, r, collective.F32(one)); err != nil {
			return -1, fmt.Errorf("exchange steps: %w", err)
		}
		steps[r] = int(int32(math.Float32bits(one[0])))
	}
	src = 0
	agree := true
	for r, s := range steps {
		if s > steps[src] {
			src = r
		}
		agree = agree && s == steps[0]
	}
	if agree {
		// Every rank trained the same steps in lockstep, or (all -1) it is
		// a fresh job and every rank initialised from the same seed.
		return -1, nil
	}
	meta := make([]float32, train.StateWords)
	if g.shares.Rank == src {
		t.State().Encode(meta)
	}
	if err := g.comm.Broadcast(ctx, src, collective.F32(meta)); err != nil {
		return -1, fmt.Errorf("broadcast state from rank %d: %w", src, err)
	}
	for i, buf := range t.Tensors() {
		if err := g.comm.Broadcast(ctx, src, collective.F32(buf)); err != nil {
			return -1, fmt.Errorf("broadcast state from rank %d: %w", src, err)
		}
		if i == 0 && steps[g.shares.Rank] < 0 {
			failpoint("state-transfer")
		}
	}
	st, err := train.DecodeState(meta)
	if err != nil {
		return -1, err
	}
	if err := t.Restore(st); err != nil {
		return -1, fmt.Errorf("state from rank %d: %w", src, err)
	}
	return src, nil
}
