package collective

import (
	"context"
	"fmt"
	"sync"
)

// memQueueDepth is how many frames a link buffers before Send blocks: enough
// that a ring step never waits on the receiver's scheduling, small enough
// that a stuck receiver shows up as back-pressure, as with TCP.
const memQueueDepth = 64

type memFrame struct {
	h       Header
	payload []byte
}

// MemGroup is a set of in-memory endpoints of one generation, joined by
// buffered channels. It exists for tests and for ranks that share a process.
type MemGroup struct {
	gen   uint64
	links [][]chan memFrame // links[src][dst]
	ends  []*MemTransport
}

// MemTransport is one rank's endpoint in a MemGroup. Payloads are copied on
// Send, so the sender may reuse its buffer at once, as with TCP.
type MemTransport struct {
	g       *MemGroup
	rank    int
	stats   counters
	done    chan struct{}
	once    sync.Once
	sendMu  []sync.Mutex
	recvMu  []sync.Mutex
	maxSize int
}

// NewMemGroup returns n connected in-memory endpoints for generation gen;
// element i is rank i. Closing an endpoint makes its peers' calls on links
// to it fail with ErrPeer, like a dead process.
func NewMemGroup(gen uint64, n int) *MemGroup {
	g := &MemGroup{gen: gen, links: make([][]chan memFrame, n), ends: make([]*MemTransport, n)}
	for s := range n {
		g.links[s] = make([]chan memFrame, n)
		for d := range n {
			g.links[s][d] = make(chan memFrame, memQueueDepth)
		}
	}
	for r := range n {
		g.ends[r] = &MemTransport{
			g: g, rank: r, done: make(chan struct{}),
			sendMu: make([]sync.Mutex, n), recvMu: make([]sync.Mutex, n),
			maxSize: DefaultMaxFrameBytes,
		}
	}
	return g
}

// Endpoint returns rank r's transport.
func (g *MemGroup) Endpoint(r int) *MemTransport { return g.ends[r] }

// Transports returns every endpoint, indexed by rank.
func (g *MemGroup) Transports() []Transport {
	out := make([]Transport, len(g.ends))
	for i, e := range g.ends {
		out[i] = e
	}
	return out
}

// Inject delivers a raw frame on the link src->dst, header as given (no
// stamping). Tests use it to play a stale or confused peer.
func (g *MemGroup) Inject(src, dst int, h Header, payload []byte) {
	g.links[src][dst] <- memFrame{h: h, payload: append([]byte(nil), payload...)}
}

// Rank implements Transport.
func (t *MemTransport) Rank() int { return t.rank }

// Size implements Transport.
func (t *MemTransport) Size() int { return len(t.g.ends) }

// Generation implements Transport.
func (t *MemTransport) Generation() uint64 { return t.g.gen }

// Stats implements Transport.
func (t *MemTransport) Stats() Stats { return t.stats.snapshot() }

// Close implements Transport.
func (t *MemTransport) Close() error {
	t.once.Do(func() { close(t.done) })
	return nil
}

func (t *MemTransport) checkPeer(peer int) error {
	if peer < 0 || peer >= len(t.g.ends) || peer == t.rank {
		return fmt.Errorf("%w: peer rank %d (self %d, size %d)", ErrConfig, peer, t.rank, len(t.g.ends))
	}
	return nil
}

// Send implements Transport.
func (t *MemTransport) Send(ctx context.Context, to int, h Header, payload []byte) error {
	if err := t.checkPeer(to); err != nil {
		return err
	}
	t.sendMu[to].Lock()
	defer t.sendMu[to].Unlock()
	if len(payload) > t.maxSize {
		return fmt.Errorf("collective: send %d bytes: %w: over the %d-byte frame limit", len(payload), ErrBufferSize, t.maxSize)
	}
	h.Generation, h.Src, h.Dst, h.Len = t.g.gen, uint32(t.rank), uint32(to), uint32(len(payload))
	f := memFrame{h: h, payload: append([]byte(nil), payload...)}
	peer := t.g.ends[to]
	select {
	case <-t.done:
		return fmt.Errorf("collective: send rank %d: %w", to, ErrClosed)
	case <-peer.done:
		return fmt.Errorf("collective: send rank %d: %w: endpoint closed", to, ErrPeer)
	case <-ctx.Done():
		return fmt.Errorf("collective: send rank %d: %w", to, ctx.Err())
	case t.g.links[t.rank][to] <- f:
	}
	t.stats.sent(len(payload))
	return nil
}

// Recv implements Transport.
func (t *MemTransport) Recv(ctx context.Context, from int, want Header, payload []byte) error {
	if err := t.checkPeer(from); err != nil {
		return err
	}
	t.recvMu[from].Lock()
	defer t.recvMu[from].Unlock()
	want.Generation, want.Src, want.Dst, want.Len = t.g.gen, uint32(from), uint32(t.rank), uint32(len(payload))
	link, peer := t.g.links[from][t.rank], t.g.ends[from]
	for {
		var f memFrame
		select {
		case f = <-link:
		case <-t.done:
			return fmt.Errorf("collective: recv rank %d: %w", from, ErrClosed)
		case <-ctx.Done():
			return fmt.Errorf("collective: recv rank %d: %w", from, ctx.Err())
		case <-peer.done:
			// Frames sent before the peer closed are still delivered, as on TCP.
			select {
			case f = <-link:
			default:
				return fmt.Errorf("collective: recv rank %d: %w: endpoint closed", from, ErrPeer)
			}
		}
		v, err := judge(f.h, want)
		switch v {
		case rejectGen, rejectRank:
			t.stats.reject(v)
			continue
		case fatalMismatch:
			return fmt.Errorf("collective: recv rank %d: %w", from, err)
		}
		copy(payload, f.payload)
		t.stats.received(len(payload))
		return nil
	}
}
