package collective

import (
	"context"
	"fmt"
	"sync"

	"github.com/loomtrain/loom/tensor"
	"go.uber.org/zap"
)

// Pipe moves point-to-point float32 messages between ranks of a transport,
// for pipeline stages: activations forward, their gradients backward. Unlike
// Communicator.Send, Pipe.Send never waits for the network: it copies the
// message into a pooled buffer and queues it for a sender goroutine of that
// peer, so a schedule in which both neighbours send before they receive
// (1F1B) cannot deadlock, and the transfer overlaps the caller's compute
// and the stage's all-reduce.
//
// Wire: a message of S bytes travels as ceil(S/ChunkBytes) frames (one for
// an empty message) of kind KindData, op OpPipe, dtype F32. A frame's Seq is
// message<<32 | chunk<<1 | last, where message counts the messages from one
// rank to another (modulo 2^32), chunk numbers the frames of a message and last marks its
// final frame; the receiver expects exactly the frames its buffer's length
// implies, so a message of another length fails with ErrMismatch (at the
// first frame whose length, index or last flag differs) instead of being
// truncated or joined to the next one. Both ends must therefore use the same
// ChunkBytes.
//
// Failure: the first failed Send or Recv (a lost peer, a mismatch, a Recv
// whose context ended mid-message) fails the pipe for good: its error is
// kept, every later call returns it, and the transport is closed, which
// makes the peers' pending calls on it fail promptly too. Over a world
// transport shared with Sub-groups, that fails the stage rings as well:
// the whole generation is re-planned.
//
// Concurrency: Send, Flush, Err and Close may be called from any
// goroutine. Recv from a given peer must be called by one goroutine at a
// time; Recvs from different peers may run concurrently, with each other and
// with Sends. A Pipe must not share peer pairs with another user of the same
// transport (a Communicator over a Sub): the transport allows one sender and
// one receiver per link.
type Pipe struct {
	t     Transport
	log   *zap.Logger
	chunk int // bytes per frame, a positive multiple of 4

	ctx    context.Context // the sender goroutines' context, ended by fail
	cancel context.CancelFunc
	done   chan struct{} // closed by fail
	wg     sync.WaitGroup

	recvSeq []uint64 // per peer: the next message number to receive; owned by that peer's receiver

	mu      sync.Mutex
	out     []*pipeOut    // per peer, created by the first Send to it
	free    [][]float32   // pooled message buffers
	flushed chan struct{} // closed when a message was handed over, if a Flush waits; else nil
	err     error         // once failed, what calls return: wraps ErrClosed and the first failure

	closeOnce sync.Once
}

// PipeConfig configures a Pipe. Every rank of a pipeline must use the same
// ChunkBytes.
type PipeConfig struct {
	// ChunkBytes bounds a frame's payload; larger messages go as several
	// frames. 0 means DefaultPipeChunkBytes; it is capped at what the
	// transport accepts in one frame, and rounded down to whole float32s.
	ChunkBytes int
	// Logger receives failure events; nil means zap.NewNop().
	Logger *zap.Logger
}

// DefaultPipeChunkBytes is the default frame size of a Pipe: large enough
// that per-frame costs vanish, small enough to fit the default
// shared-memory ring several times.
const DefaultPipeChunkBytes = 1 << 20

// errClosedByClose is the cause of a pipe closed by its owner.
var errClosedByClose = fmt.Errorf("%w by Close", ErrClosed)

// pipeMaxFree bounds how many idle message buffers a Pipe keeps.
const pipeMaxFree = 16

// pipeOut is the send side towards one peer.
type pipeOut struct {
	peer  int
	wake  chan struct{} // cap 1: "the queue grew"
	queue []pipeMsg     // messages [head, len) wait; guarded by Pipe.mu
	head  int
	next  uint64 // number of the next message queued; guarded by Pipe.mu
	sent  uint64 // messages handed to the transport; guarded by Pipe.mu
}

type pipeMsg struct {
	seq  uint64
	data []float32 // a pooled buffer
}

// NewPipe returns a Pipe over t, which it owns from now on (Close closes
// it). It starts no goroutine until the first Send to a peer, which starts
// that peer's sender goroutine; Close stops them.
func NewPipe(t Transport, cfg PipeConfig) *Pipe {
	chunk := cfg.ChunkBytes
	if chunk <= 0 {
		chunk = DefaultPipeChunkBytes
	}
	chunk = min(chunk, maxFrameBytes(t)) &^ 3
	chunk = max(chunk, 4)
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pipe{
		t: t, log: log, chunk: chunk, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), recvSeq: make([]uint64, t.Size()),
		out: make([]*pipeOut, t.Size()),
	}
}

// maxFrameBytes is the largest payload t sends in one frame.
func maxFrameBytes(t Transport) int {
	switch tt := baseTransport(t).(type) {
	case *TCPTransport:
		return tt.cfg.MaxFrameBytes
	case *MemTransport:
		return tt.maxSize
	}
	return DefaultMaxFrameBytes
}

// ChunkBytes is the frame size the pipe uses.
func (p *Pipe) ChunkBytes() int { return p.chunk }

// Send queues a copy of data for rank to and returns at once: it never
// waits for the network (data may be reused as soon as it returns).
// Messages to one peer go out in the order of the Send calls. It fails with
// the pipe's error if the pipe has failed or been closed; a failure of the
// transfer itself shows up at a later call (Send, Recv or Flush).
func (p *Pipe) Send(to int, data []float32) error {
	if err := p.checkPeer("send to", to); err != nil {
		return err
	}
	if _, err := p.frames(len(data)); err != nil {
		return fmt.Errorf("collective: pipe: send to rank %d: %w", to, err)
	}
	p.mu.Lock()
	if p.err != nil {
		defer p.mu.Unlock()
		return p.err
	}
	buf := p.takeLocked(len(data))
	p.mu.Unlock()
	copy(buf, data) // outside the lock: messages are megabytes

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	o := p.out[to]
	if o == nil {
		o = &pipeOut{peer: to, wake: make(chan struct{}, 1)}
		p.out[to] = o
		p.wg.Add(1)
		go p.sender(o)
	}
	o.queue = append(o.queue, pipeMsg{seq: o.next, data: buf})
	o.next++
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// Recv blocks until the next message from rank from has been read into dst,
// whose length must equal the message's: otherwise it fails with an error
// wrapping ErrMismatch, and so does the pipe. It honours ctx: a context
// that has ended before the call returns its error and leaves the pipe
// usable, but one that ends during the transfer fails the pipe (the link
// may be mid-frame). Recv from one peer is called by one goroutine at a time.
func (p *Pipe) Recv(ctx context.Context, from int, dst []float32) error {
	if err := p.checkPeer("recv from", from); err != nil {
		return err
	}
	nf, err := p.frames(len(dst))
	if err != nil {
		return fmt.Errorf("collective: pipe: recv from rank %d: %w", from, err)
	}
	if err := p.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("collective: pipe: recv from rank %d: %w", from, err)
	}
	msg := p.recvSeq[from]
	p.recvSeq[from]++
	b := f32Bytes(dst)
	for k := range nf {
		lo := k * p.chunk
		hi := min(lo+p.chunk, len(b))
		h := Header{Kind: KindData, Op: OpPipe, DType: tensor.F32, Seq: frameSeq(msg, k, k == nf-1)}
		if err := p.t.Recv(ctx, from, h, b[lo:hi]); err != nil {
			return p.fail(fmt.Errorf("collective: pipe: recv from rank %d (message %d, %d elements, frame %d of %d): %w",
				from, msg, len(dst), k+1, nf, err))
		}
	}
	return nil
}

// Flush returns once every message queued before the call has been handed
// to the transport (for TCP: written to the socket or the shared-memory
// ring; it does not wait for the peer's Recv), or with the pipe's error, or
// with ctx's. A Flush that ends with ctx leaves the pipe usable.
func (p *Pipe) Flush(ctx context.Context) error {
	p.mu.Lock()
	target := make([]uint64, len(p.out))
	for i, o := range p.out {
		if o != nil {
			target[i] = o.next
		}
	}
	for {
		if p.err != nil {
			defer p.mu.Unlock()
			return p.err
		}
		pending := false
		for i, o := range p.out {
			if o != nil && o.sent < target[i] {
				pending = true
				break
			}
		}
		if !pending {
			p.mu.Unlock()
			return nil
		}
		if p.flushed == nil {
			p.flushed = make(chan struct{})
		}
		ch := p.flushed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("collective: pipe: flush: %w", ctx.Err())
		}
		p.mu.Lock()
	}
}

// Err returns the error that failed or closed the pipe (wrapping ErrClosed
// and the first failure), or nil while it is usable.
func (p *Pipe) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Close stops the sender goroutines, dropping the messages still queued,
// and closes the transport; pending calls fail with ErrClosed. Idempotent;
// safe from any goroutine.
func (p *Pipe) Close() error {
	p.closeOnce.Do(func() {
		p.fail(errClosedByClose)
		p.wg.Wait()
	})
	return nil
}

// fail records the first failure, stops the senders and closes the
// transport, which makes the peers' pending calls fail too. It returns err
// if that was the first failure, else the pipe's error.
func (p *Pipe) fail(err error) error {
	p.mu.Lock()
	if p.err != nil {
		defer p.mu.Unlock()
		return p.err
	}
	if err == errClosedByClose {
		p.err = fmt.Errorf("collective: pipe: %w", err)
	} else {
		p.err = fmt.Errorf("collective: pipe: %w after %w", ErrClosed, err)
	}
	close(p.done)
	p.cancel()
	if p.flushed != nil {
		close(p.flushed)
		p.flushed = nil
	}
	p.mu.Unlock()
	_ = p.t.Close()
	lvl := zap.WarnLevel
	if err == errClosedByClose { // the owner's Close is routine
		lvl = zap.DebugLevel
	}
	p.log.Log(lvl, "pipe closed", zap.Int("rank", p.t.Rank()), zap.Uint64("generation", p.t.Generation()), zap.Error(err))
	return err
}

// sender hands o's queued messages to the transport, in order, until the
// pipe fails. One per peer sent to.
func (p *Pipe) sender(o *pipeOut) {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		for o.head == len(o.queue) && p.err == nil {
			p.mu.Unlock()
			select {
			case <-o.wake:
			case <-p.done:
			}
			p.mu.Lock()
		}
		if p.err != nil { // queued messages are dropped
			clear(o.queue)
			o.queue, o.head = nil, 0
			p.mu.Unlock()
			return
		}
		m := o.queue[o.head]
		o.queue[o.head] = pipeMsg{}
		if o.head++; o.head == len(o.queue) {
			o.queue, o.head = o.queue[:0], 0
		}
		p.mu.Unlock()

		err := p.sendMsg(o.peer, m)
		if err != nil { // fail before a Flush can count the message as sent
			p.fail(fmt.Errorf("collective: pipe: send to rank %d (message %d, %d elements): %w", o.peer, m.seq, len(m.data), err))
			return
		}

		p.mu.Lock()
		p.giveLocked(m.data)
		o.sent++
		if p.flushed != nil {
			close(p.flushed)
			p.flushed = nil
		}
		p.mu.Unlock()
	}
}

// sendMsg writes one message as its frames.
func (p *Pipe) sendMsg(to int, m pipeMsg) error {
	nf, err := p.frames(len(m.data))
	if err != nil {
		return err
	}
	b := f32Bytes(m.data)
	for k := range nf {
		lo := k * p.chunk
		hi := min(lo+p.chunk, len(b))
		h := Header{Kind: KindData, Op: OpPipe, DType: tensor.F32, Seq: frameSeq(m.seq, k, k == nf-1)}
		if err := p.t.Send(p.ctx, to, h, b[lo:hi]); err != nil {
			return err
		}
	}
	return nil
}

// frames is the number of frames a message of n float32s travels as.
func (p *Pipe) frames(n int) (int, error) {
	nf := max(1, (n*4+p.chunk-1)/p.chunk)
	if nf > 1<<31 {
		return 0, fmt.Errorf("%w: %d elements make %d frames of %d bytes, over 2^31", ErrBufferSize, n, nf, p.chunk)
	}
	return nf, nil
}

// frameSeq is frame k's Seq in message msg (see Pipe).
func frameSeq(msg uint64, k int, last bool) uint64 {
	s := msg<<32 | uint64(k)<<1
	if last {
		s |= 1
	}
	return s
}

func (p *Pipe) checkPeer(dir string, peer int) error {
	if peer < 0 || peer >= p.t.Size() || peer == p.t.Rank() {
		return fmt.Errorf("collective: pipe: %s rank %d: %w: peer outside [0,%d) or self (%d)", dir, peer, ErrConfig, p.t.Size(), p.t.Rank())
	}
	return nil
}

// takeLocked returns a buffer of n elements, from the pool if one is large
// enough (the smallest such). The caller holds p.mu.
func (p *Pipe) takeLocked(n int) []float32 {
	if n == 0 {
		return []float32{}
	}
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return make([]float32, n)
	}
	b := p.free[best][:n]
	last := len(p.free) - 1
	p.free[best], p.free[last] = p.free[last], nil
	p.free = p.free[:last]
	return b
}

// giveLocked returns a buffer to the pool. The caller holds p.mu.
func (p *Pipe) giveLocked(b []float32) {
	if cap(b) > 0 && len(p.free) < pipeMaxFree {
		p.free = append(p.free, b)
	}
}
