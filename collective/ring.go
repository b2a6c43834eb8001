package collective

import (
	"context"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/loomtrain/loom/internal/vec"
	"github.com/loomtrain/loom/tensor"
)

// The ring schedule. Ranks sit at positions 0..n-1 of Config.Order; position
// p sends to p+1 and receives from p-1. The buffer is cut into n segments,
// segment q being the Shard of the rank at position q. A full AllReduce runs
// global steps t = 0..2n-3; at step t position p
//
//	sends    segment (p - t - 1) mod n
//	receives segment (p - t - 2) mod n, and adds it into its own copy while
//	         t < n-1 (reduce-scatter) or overwrites it after (all-gather).
//
// After step n-2 position p holds the complete sum of its own segment p, so
// ReduceScatter is steps [0, n-1) and AllGather is steps [n-1, 2n-2). What
// is sent at step t+1 is what was received at step t, segment by segment,
// so each segment is cut into nsub sub-chunks (the same count for every
// segment, so sub-chunk k of step t+1 depends only on sub-chunk k of step t).
// The calling goroutine receives and reduces; a sender goroutine sends unit
// (t, k) as soon as unit (t-1, k) has been received, so the two directions of
// the link and the reduction all overlap. Units travel in wavefront order
// (see wavefront), so a sub-chunk is forwarded while still in cache. In the all-gather half the receiver
// overwrites memory the sender read n-1 steps earlier; data can only arrive
// after that send (it went round the ring), and the receiver also waits on the
// sender's counter so that the ordering is visible to the memory model (and
// the race detector), not only to the network.

// waveLag is the wavefront's lag in sub-chunks between consecutive steps;
// see wavefront.
const waveLag = 2

// wavefront orders the units (t, k) of a ring operation (t: step relative to
// the first, k: sub-chunk) so that a sub-chunk travels on soon after it
// arrives, while it is still in cache, instead of after the whole step:
// wave w holds the units with k + t·lag = w, in increasing t. Unit (t, k)
// depends only on (t-1, k), which is lag waves earlier, so every rank can
// follow the same order without waiting on a later unit. Sender and receiver
// of a link walk the same order, which fixes the order of frames on it.
type wavefront struct{ steps, nsub, lag int }

func (s wavefront) waves() int { return s.nsub + (s.steps-1)*s.lag }

// tmin and tmax bound the steps present in wave w.
func (s wavefront) tmin(w int) int {
	if v := w - s.nsub + 1; v > 0 {
		return (v + s.lag - 1) / s.lag
	}
	return 0
}

func (s wavefront) tmax(w int) int { return min(s.steps-1, w/s.lag) }

// index is the position of unit (t, k) in the order: the units of earlier
// waves plus those of wave w with a smaller step.
func (s wavefront) index(t, k int) int64 {
	w := k + t*s.lag
	n := t - s.tmin(w)
	for j := range s.steps {
		n += min(max(w-j*s.lag, 0), s.nsub)
	}
	return int64(n)
}

// planKind distinguishes the ring schedule from the broadcast chain.
type planKind uint8

const (
	planRing planKind = iota
	planChain
)

// plan is the operation in progress. The calling goroutine fills it before
// handing the job to the sender goroutine (the channel send orders the
// writes before the sender's reads); neither changes it during the operation.
type plan struct {
	kind        planKind
	op          Op
	seq         uint64
	buf         Buffer
	wire        tensor.DType // dtype on the wire
	first, last int          // ring steps [first, last)
	nsub        int          // sub-chunks per segment
	segLo       []int        // segment bounds by ring position (elements)
	segHi       []int

	chainSend, chainRecv bool // broadcast: forward to the right / receive from the left
}

// sched returns the order in which this plan's ring units travel.
func (p *plan) sched() wavefront {
	return wavefront{steps: p.last - p.first, nsub: p.nsub, lag: waveLag}
}

// sub returns the element range of sub-chunk k of segment q.
func (p *plan) sub(q, k int) (lo, hi int) {
	a, l := p.segLo[q], p.segHi[q]-p.segLo[q]
	return a + k*l/p.nsub, a + (k+1)*l/p.nsub
}

var errAborted = fmt.Errorf("%w: operation aborted", ErrClosed)

func mod(a, n int) int { return ((a % n) + n) % n }

// u16View views float32 scratch as twice as many uint16.
func u16View(f []float32) []uint16 {
	return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(f))), 2*len(f))
}

// ring runs ring steps [first, last) of the schedule on b.
func (c *Communicator) ring(ctx context.Context, op Op, b Buffer, first, last int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.begin(ctx, op, b); err != nil {
		return err
	}
	c.seq++
	if c.n == 1 {
		return nil
	}
	p := &c.plan
	p.kind, p.op, p.seq, p.buf, p.wire, p.first, p.last = planRing, op, c.seq, b, c.wireDType(b), first, last
	size, maxSeg := b.Len(), 0
	for q, r := range c.order {
		p.segLo[q], p.segHi[q] = Shard(size, c.n, r)
		maxSeg = max(maxSeg, p.segHi[q]-p.segLo[q])
	}
	chunkElems := max(1, c.cfg.ChunkBytes/p.wire.Size())
	p.nsub = max(1, (maxSeg+chunkElems-1)/chunkElems)
	c.scratch((maxSeg+p.nsub-1)/p.nsub + 1)
	if op == OpAllReduce && c.cfg.Observer != nil {
		return c.observed(func() error { return c.run(ctx, op, c.recvRing) })
	}
	return c.run(ctx, op, c.recvRing)
}

// chain runs a pipelined broadcast from root along the ring.
func (c *Communicator) chain(ctx context.Context, root int, b Buffer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.begin(ctx, OpBroadcast, b); err != nil {
		return err
	}
	c.seq++
	if c.n == 1 {
		return nil
	}
	rootPos := 0
	for q, r := range c.order {
		if r == root {
			rootPos = q
		}
	}
	d := mod(c.pos-rootPos, c.n) // hops from the root
	p := &c.plan
	p.kind, p.op, p.seq, p.buf, p.wire = planChain, OpBroadcast, c.seq, b, b.DType
	p.segLo[0], p.segHi[0] = 0, b.Len()
	chunkElems := max(1, c.cfg.ChunkBytes/p.wire.Size())
	p.nsub = max(1, (b.Len()+chunkElems-1)/chunkElems)
	p.chainRecv, p.chainSend = d != 0, d != c.n-1
	return c.run(ctx, OpBroadcast, c.recvChain)
}

// run hands the plan to the sender goroutine, receives on the calling
// goroutine, and joins the two. The caller holds c.mu.
func (c *Communicator) run(ctx context.Context, op Op, recv func(context.Context) error) error {
	c.ready.Store(0)
	c.sent.Store(0)
	c.offer.Store(offerNone)
	select {
	case <-c.wake:
	default:
	}
	select {
	case <-c.sentAck:
	default:
	}
	select {
	case c.jobs <- ctx:
	case <-c.quit:
		return c.finish(op, ErrClosed)
	}
	rerr := recv(ctx)
	if rerr != nil {
		c.fail(rerr)
	}
	serr := <-c.results
	if rerr != nil {
		return c.finish(op, rerr)
	}
	return c.finish(op, serr)
}

// sender is the communicator's sending goroutine; it runs one job per
// operation and exits on Close.
func (c *Communicator) sender() {
	defer close(c.exited)
	for {
		select {
		case <-c.quit:
			return
		case ctx := <-c.jobs:
			var err error
			if c.plan.kind == planRing {
				err = c.sendRing(ctx)
			} else {
				err = c.sendChain(ctx)
			}
			if err != nil {
				c.fail(err)
			}
			c.results <- err
		}
	}
}

// waitReady blocks until at least need units have been received in the
// current operation, or the operation is aborted.
func (c *Communicator) waitReady(need int64) error {
	for c.ready.Load() < need {
		if c.aborted.Load() {
			return errAborted
		}
		<-c.wake
	}
	return nil
}

// received publishes one more received unit to the sender.
func (c *Communicator) received() {
	c.ready.Add(1)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// sentOne publishes one more sent unit to the receiver.
func (c *Communicator) sentOne() {
	c.sent.Add(1)
	select {
	case c.sentAck <- struct{}{}:
	default:
	}
}

// waitSent blocks until at least need units have been sent in the current
// operation, or the operation is aborted.
func (c *Communicator) waitSent(need int64) error {
	for c.sent.Load() < need {
		if c.aborted.Load() {
			return errAborted
		}
		<-c.sentAck
	}
	return nil
}

// Fused forwarding. What a rank sends at step t+1 is what it received at
// step t: the partial sum (received + own) in the reduce-scatter half, the
// received values in the all-gather half. Done in two passes, the receiver
// writes it into the caller's buffer and the sender then copies it into the
// link; on a link with shared memory (directSender) the sender instead
// reserves the forward's frame in the ring before it waits for the receive,
// and offers it: a receiver that finds the offer writes the forward there
// in the same pass as its reduction (and skips writing a partial sum into
// the caller's buffer at all, since no one reads it again: the all-gather
// overwrites it, and ReduceScatter leaves it unspecified). Either side may
// win the race for a unit: the sender claims an offer back after the
// receive, and copies as before when the receiver did not take it.
const (
	offerNone  = -1
	offerTaken = -2
)

// fused reports whether the plan's frames may be forwarded fused: float32
// on the wire and in the buffer, over a transport that can reserve frames.
func (c *Communicator) fused(p *plan) bool {
	return c.direct != nil && p.buf.DType == tensor.F32 && p.wire == tensor.F32
}

// forwardFused sends unit (tr, k) (tr >= 1, range [lo, hi) of the buffer)
// through a reserved frame offered to the receiver; false means the link
// cannot reserve it and the caller sends it the usual way.
func (c *Communicator) forwardFused(ctx context.Context, h Header, u int64, lo, hi int) (bool, error) {
	p := &c.plan
	slot, err := c.direct.Reserve(ctx, c.right, (hi-lo)*4)
	if err != nil || slot == nil {
		return false, err
	}
	c.slot = f32Of(slot)
	c.offer.Store(u)
	if err := c.waitReady(u + 1); err != nil {
		c.direct.Cancel(c.right)
		return false, err
	}
	if c.offer.CompareAndSwap(u, offerNone) { // the receiver did not take it
		copy(c.slot, p.buf.F32[lo:hi])
	} else {
		c.offer.Store(offerNone)
	}
	c.slot = nil
	if err := c.direct.Commit(ctx, c.right, h); err != nil {
		return false, err
	}
	return true, nil
}

// takeOffer reports whether the sender offered the forward slot of received
// unit u, and claims it.
func (c *Communicator) takeOffer(u int64) bool {
	return c.offer.Load() == u && c.offer.CompareAndSwap(u, offerTaken)
}

func (c *Communicator) sendRing(ctx context.Context) error {
	p := &c.plan
	h := Header{Kind: KindData, Op: p.op, DType: p.wire, Seq: p.seq}
	compress := p.buf.DType == tensor.F32 && p.wire != tensor.F32
	fused := c.fused(p)
	s := p.sched()
	for w := range s.waves() {
		for tr := s.tmin(w); tr <= s.tmax(w); tr++ {
			k, t := w-tr*s.lag, p.first+tr
			lo, hi := p.sub(mod(c.pos-t-1, c.n), k)
			if tr > 0 && fused {
				if ok, err := c.forwardFused(ctx, h, s.index(tr-1, k), lo, hi); err != nil {
					return err
				} else if ok {
					c.sentOne()
					continue
				}
			}
			if tr > 0 { // forward what unit (t-1, k) brought
				if err := c.waitReady(s.index(tr-1, k) + 1); err != nil {
					return err
				}
			}
			var payload []byte
			if compress {
				enc := u16View(c.sbuf)[:hi-lo]
				encodeWire(p.wire, enc, p.buf.F32[lo:hi])
				if t == c.n-1 { // first send of my finished segment: round my copy alike
					decodeWire(p.wire, p.buf.F32[lo:hi], enc)
				}
				payload = u16Bytes(enc)
			} else {
				payload = p.buf.bytes(lo, hi)
			}
			if err := c.t.Send(ctx, c.right, h, payload); err != nil {
				return err
			}
			c.sentOne()
		}
	}
	return nil
}

func (c *Communicator) recvRing(ctx context.Context) error {
	p := &c.plan
	h := Header{Kind: KindData, Op: p.op, DType: p.wire, Seq: p.seq}
	b := p.buf
	fused := c.fused(p)
	s := p.sched()
	for w := range s.waves() {
		for tr := s.tmin(w); tr <= s.tmax(w); tr++ {
			k, t := w-tr*s.lag, p.first+tr
			reduce := t < c.n-1
			lo, hi := p.sub(mod(c.pos-t-2, c.n), k)
			if back := t + 1 - c.n; !reduce && back >= p.first { // the sender read this range at step back
				if err := c.waitSent(s.index(back-p.first, k) + 1); err != nil {
					return err
				}
			}
			var err error
			var in []byte
			switch {
			case fused && reduce:
				if in, err = c.recvLend(ctx, h, f32Bytes(c.rbuf[:hi-lo])); err == nil {
					own := b.F32[lo:hi]
					switch {
					case !c.takeOffer(s.index(tr, k)):
						addF32(own, f32Of(in))
					case t == c.n-2: // my own segment, complete: keep it and forward it
						vec.Sum2(own, c.slot, own, f32Of(in))
					default: // a partial sum only the next rank needs
						vec.Sum(c.slot, own, f32Of(in))
					}
					c.release()
				}
			case fused:
				own := b.F32[lo:hi]
				if in, err = c.recvLend(ctx, h, f32Bytes(own)); err == nil {
					inPlace := len(own) == 0 || &f32Of(in)[0] == &own[0] // read from the socket straight into own
					switch offered := c.takeOffer(s.index(tr, k)); {
					case offered && inPlace:
						copy(c.slot, own)
					case offered:
						vec.Copy2(own, c.slot, f32Of(in))
					case !inPlace:
						copy(own, f32Of(in))
					}
					c.release()
				}
			case b.DType == tensor.F32 && p.wire == tensor.F32:
				if reduce {
					if in, err = c.recvLend(ctx, h, f32Bytes(c.rbuf[:hi-lo])); err == nil {
						addF32(b.F32[lo:hi], f32Of(in))
						c.release()
					}
				} else {
					err = c.t.Recv(ctx, c.left, h, b.bytes(lo, hi))
				}
			case b.DType == tensor.F32: // compressed float32
				if in, err = c.recvLend(ctx, h, u16Bytes(u16View(c.rbuf)[:hi-lo])); err == nil {
					if reduce {
						addWire(p.wire, b.F32[lo:hi], u16Of(in))
					} else {
						decodeWire(p.wire, b.F32[lo:hi], u16Of(in))
					}
					c.release()
				}
			default: // 16-bit buffer, its own dtype on the wire
				if reduce {
					if in, err = c.recvLend(ctx, h, u16Bytes(u16View(c.rbuf)[:hi-lo])); err == nil {
						addHalf(p.wire, b.U16[lo:hi], u16Of(in))
						c.release()
					}
				} else {
					err = c.t.Recv(ctx, c.left, h, b.bytes(lo, hi))
				}
			}
			if err != nil {
				return err
			}
			c.received()
			if !reduce && c.gatherFrom.IsZero() {
				// The first unit of the all-gather: every rank has started.
				c.gatherFrom, c.gatherAt = time.Now(), c.ready.Load()
			}
			if fused {
				// Let the sender, now runnable, commit this unit's forward
				// and offer the next before this goroutine takes the next
				// unit: with one P per rank (GOMAXPROCS = cores/ranks) the
				// receiver would otherwise run ahead and find no offers.
				runtime.Gosched()
			}
		}
	}
	return nil
}

// recvLend receives the next unit from the left neighbour for a single read:
// in place where the transport can lend it (see lender), else into scratch.
// After a nil error the caller calls release.
func (c *Communicator) recvLend(ctx context.Context, h Header, scratch []byte) ([]byte, error) {
	if c.lend != nil {
		return c.lend.RecvLend(ctx, c.left, h, scratch)
	}
	return scratch, c.t.Recv(ctx, c.left, h, scratch)
}

func (c *Communicator) release() {
	if c.lend != nil {
		c.lend.Release(c.left)
	}
}

// f32Of and u16Of view received bytes as the values they carry. Payloads
// lie at 4-byte-aligned addresses: in Go-allocated scratch, or at 64-byte
// positions of a page-aligned shared-memory ring.
func f32Of(b []byte) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

func u16Of(b []byte) []uint16 {
	return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/2)
}

func (c *Communicator) sendChain(ctx context.Context) error {
	p := &c.plan
	if !p.chainSend {
		return nil
	}
	h := Header{Kind: KindData, Op: p.op, DType: p.wire, Seq: p.seq}
	for k := range p.nsub {
		if p.chainRecv {
			if err := c.waitReady(int64(k) + 1); err != nil {
				return err
			}
		}
		lo, hi := p.sub(0, k)
		if err := c.t.Send(ctx, c.right, h, p.buf.bytes(lo, hi)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Communicator) recvChain(ctx context.Context) error {
	p := &c.plan
	if !p.chainRecv {
		return nil
	}
	h := Header{Kind: KindData, Op: p.op, DType: p.wire, Seq: p.seq}
	for k := range p.nsub {
		lo, hi := p.sub(0, k)
		if err := c.t.Recv(ctx, c.left, h, p.buf.bytes(lo, hi)); err != nil {
			return err
		}
		c.received()
	}
	return nil
}
