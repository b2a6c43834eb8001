// Package collective sums gradients and moves activations between the ranks
// of one plan generation: ring AllReduce, ReduceScatter, AllGather, pipelined
// Broadcast, Barrier, and point-to-point Send/Recv, over a Transport (TCP or
// in-memory).
//
// The ring algorithms are bandwidth-optimal: AllReduce of S bytes over n ranks
// sends 2(n-1)/n·S bytes per rank, in chunks of Config.ChunkBytes, with a
// dedicated sender goroutine so that sending chunk k+1 overlaps receiving and
// reducing chunk k. Buffers are used in place: payloads are written from and,
// where no reduction is needed, read into the caller's slice, and scratch
// space is kept between calls, so a steady-state AllReduce allocates nothing.
//
// Failure model: every call takes a context. Any failure (a peer's connection
// drops, the context ends, ranks call different operations) closes the
// Communicator and its transport; closing the links makes the neighbours
// fail in turn, so every rank's pending call returns an error promptly rather
// than waiting for its deadline. A closed Communicator stays closed: the
// worker builds a new one for the next plan generation.
package collective

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomtrain/loom/tensor"
	"go.uber.org/zap"
)

// Communicator runs collectives for one rank of a fixed group. Its methods
// may be called from any goroutine but run one at a time (a call waits for
// the previous one); every rank must call the same collectives in the same
// order with buffers of the same length. Close may be called at any time.
type Communicator struct {
	cfg    Config
	t      Transport
	lend   lender       // t, if it can lend received payloads; else nil
	kind   string       // t's kind for Observer: "tcp", "tls" or "mem"
	direct directSender // t, if it can fill frames to the right neighbour in place; else nil
	log    *zap.Logger
	n      int
	pos    int   // my position in the ring
	order  []int // ring order (ranks)
	left   int   // rank I receive from
	right  int   // rank I send to

	mu      sync.Mutex // serialises operations
	seq     uint64     // collective sequence number, same on every rank
	p2pSend []uint64   // per-peer message counters for Send
	p2pRecv []uint64   // per-peer message counters for Recv
	plan    plan       // the operation in progress, read by the sender goroutine
	rbuf    []float32  // receive scratch, grown on demand
	sbuf    []float32  // send scratch (compression), grown on demand

	// Pipeline between the receiving (calling) goroutine and the sender.
	ready   atomic.Int64  // units received and reduced in the current operation
	wake    chan struct{} // cap 1: "ready moved"
	sent    atomic.Int64  // units sent in the current operation
	sentAck chan struct{} // cap 1: "sent moved"
	// gatherFrom is when the current all-reduce received its first
	// all-gather unit (zero before), gatherAt how many units it had
	// received by then; set and read on the calling goroutine only.
	gatherFrom time.Time
	gatherAt   int64
	aborted    atomic.Bool // the current operation failed; the sender stops
	// Fused forwarding (see sendRing): the sender offers the receiver the
	// frame it will forward next, already reserved in link memory.
	offer   atomic.Int64 // unit index whose forward slot is offered; offerNone or offerTaken
	slot    []float32    // the offered slot; written before offer is stored
	jobs    chan context.Context
	results chan error
	quit    chan struct{}
	exited  chan struct{}

	failOnce  sync.Once
	cause     error // first failure; set once under failOnce
	closeOnce sync.Once
}

// New returns a Communicator for cfg over t, which it owns from now on
// (Close closes it). It starts one sender goroutine, stopped by Close.
func New(t Transport, cfg Config) (*Communicator, error) {
	if err := cfg.validateFor(t); err != nil {
		return nil, err
	}
	n := t.Size()
	order := cfg.Order
	if len(order) == 0 {
		order = make([]int, n)
		for i := range order {
			order[i] = i
		}
	} else {
		order = append([]int(nil), order...)
	}
	pos := 0
	for i, r := range order {
		if r == cfg.Rank {
			pos = i
		}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	c := &Communicator{
		cfg: cfg, t: t, log: log, n: n, pos: pos, order: order,
		left: order[(pos+n-1)%n], right: order[(pos+1)%n],
		p2pSend: make([]uint64, n), p2pRecv: make([]uint64, n),
		wake: make(chan struct{}, 1), sentAck: make(chan struct{}, 1), jobs: make(chan context.Context),
		results: make(chan error, 1), quit: make(chan struct{}), exited: make(chan struct{}),
	}
	c.lend, _ = t.(lender)
	c.kind = transportKind(t)
	if d, ok := t.(directSender); ok && n > 1 && d.SharedMemoryTo(c.right) {
		c.direct = d
	}
	c.plan.segLo = make([]int, n)
	c.plan.segHi = make([]int, n)
	go c.sender()
	return c, nil
}

// transportKind names t's kind for Observer: "tcp" or "tls" for a
// TCPTransport or a Sub of one, else "mem".
func transportKind(t Transport) string {
	if tt, ok := baseTransport(t).(*TCPTransport); ok {
		if tt.cfg.TLS != nil {
			return "tls"
		}
		return "tcp"
	}
	return "mem"
}

// Rank is this communicator's rank.
func (c *Communicator) Rank() int { return c.cfg.Rank }

// Size is the number of ranks.
func (c *Communicator) Size() int { return c.n }

// Generation is the plan generation.
func (c *Communicator) Generation() uint64 { return c.cfg.Generation }

// Order returns the ring order (a copy).
func (c *Communicator) Order() []int { return append([]int(nil), c.order...) }

// Stats returns the transport's counters.
func (c *Communicator) Stats() Stats { return c.t.Stats() }

// Err returns the failure that closed the communicator (wrapping ErrClosed
// and the cause), or nil while it is usable. It does not wait for a call in
// progress.
func (c *Communicator) Err() error { return c.errLocked() }

func (c *Communicator) errLocked() error {
	if c.aborted.Load() {
		return fmt.Errorf("%w: %w", ErrClosed, c.cause)
	}
	return nil
}

// Close stops the sender goroutine and closes the transport; a call in
// progress fails with ErrClosed. Idempotent; safe from any goroutine.
func (c *Communicator) Close() error {
	c.closeOnce.Do(func() {
		c.fail(fmt.Errorf("%w by Close", ErrClosed))
		close(c.quit)
		<-c.exited
	})
	return nil
}

// fail records the first failure, stops the current operation and closes the
// transport, which makes the peers' pending calls fail too.
func (c *Communicator) fail(err error) {
	c.failOnce.Do(func() {
		c.cause = err
		c.aborted.Store(true)
		c.signal()
		_ = c.t.Close()
		// A Close by the owner (the end of a plan generation) is routine;
		// anything else is a failure worth a warning.
		lvl := zap.WarnLevel
		if errors.Is(err, ErrClosed) {
			lvl = zap.DebugLevel
		}
		c.log.Log(lvl, "communicator closed", zap.Int("rank", c.cfg.Rank),
			zap.Uint64("generation", c.cfg.Generation), zap.Error(err))
	})
}

// signal wakes both goroutines of the current operation if they wait.
func (c *Communicator) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
	select {
	case c.sentAck <- struct{}{}:
	default:
	}
}

// begin starts an operation: it checks the communicator is usable and the
// buffer well-formed. The caller holds c.mu.
func (c *Communicator) begin(ctx context.Context, op Op, b Buffer) error {
	if err := c.errLocked(); err != nil {
		return fmt.Errorf("collective: %s: %w", op, err)
	}
	if err := b.check(); err != nil {
		return fmt.Errorf("collective: %s: %w", op, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("collective: %s: %w", op, err)
	}
	return nil
}

// finish turns an operation's outcome into its error. A failure closes the
// communicator; the error returned is the first cause on this rank.
func (c *Communicator) finish(op Op, err error) error {
	if err == nil {
		return nil
	}
	c.fail(err)
	return fmt.Errorf("collective: %s (rank %d, generation %d, seq %d): %w", op, c.cfg.Rank, c.cfg.Generation, c.seq, c.cause)
}

// AllReduce replaces b on every rank with the element-wise sum over ranks.
// For a mean, divide by Size() afterwards (the caller knows the right
// divisor, e.g. the global batch). With Config.Compress set, float32 values
// travel narrowed and each hop sums in fp32 (see Compression.ErrorBound);
// every rank ends with bitwise-identical values. 16-bit buffers travel in
// their own dtype and are summed in fp32 at each hop.
func (c *Communicator) AllReduce(ctx context.Context, b Buffer) error {
	return c.ring(ctx, OpAllReduce, b, 0, 2*c.n-2)
}

// ReduceScatter leaves in b[Shard(b.Len(), Size(), Rank())] the element-wise
// sum over ranks of that range; the rest of b is left unspecified.
func (c *Communicator) ReduceScatter(ctx context.Context, b Buffer) error {
	return c.ring(ctx, OpReduceScatter, b, 0, c.n-1)
}

// AllGather fills every rank's b with each rank r's b[Shard(b.Len(), Size(), r)].
// With compression, float32 values travel narrowed (and the owner's own
// range is rounded the same way, so all ranks agree).
func (c *Communicator) AllGather(ctx context.Context, b Buffer) error {
	return c.ring(ctx, OpAllGather, b, c.n-1, 2*c.n-2)
}

// Barrier returns once every rank has entered it.
func (c *Communicator) Barrier(ctx context.Context) error {
	return c.ring(ctx, OpBarrier, F32(nil), c.n-1, 2*c.n-2)
}

// Broadcast copies root's b to every rank's b, exactly (no compression),
// pipelined along the ring starting at root.
func (c *Communicator) Broadcast(ctx context.Context, root int, b Buffer) error {
	if root < 0 || root >= c.n {
		return fmt.Errorf("collective: broadcast: %w: root %d outside [0,%d)", ErrConfig, root, c.n)
	}
	return c.chain(ctx, root, b)
}

// wireDType is the dtype b travels as in reducing collectives.
func (c *Communicator) wireDType(b Buffer) tensor.DType {
	if b.DType == tensor.F32 {
		return c.cfg.Compress.wireDType()
	}
	return b.DType
}

// scratch returns receive and send scratch of at least elems float32 each
// (reused between calls; grown, never shrunk).
func (c *Communicator) scratch(elems int) {
	if len(c.rbuf) < elems {
		c.rbuf = make([]float32, elems)
		c.sbuf = make([]float32, elems)
	}
}
