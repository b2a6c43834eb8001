package collective

import (
	"context"
	"fmt"
)

// Sub-groups of one transport, for plans with several groups per worker: a
// pipeline-parallel worker holds one full-mesh transport over every rank of
// the plan (the world) and runs a ring Communicator over the ranks of its
// own stage, while a Pipe carries activations to and from the neighbouring
// stages over the same world. The Transport contract allows one sender and
// one receiver per peer at a time, so the groups sharing a world must not
// share a peer pair: a stage's ring links join ranks of one stage, a pipe's
// links ranks of different stages.

// Sub returns the view of t restricted to members: world ranks, in
// local-rank order (members must be distinct, in range, and contain
// t.Rank()). Local rank i is world rank members[i]; Rank() is t.Rank()'s
// position, Size() len(members), Generation() t's. Send and Recv map local
// ranks to world ranks (frames on the wire carry world ranks); Stats are
// t's, so they count every group's traffic. Close closes t: a failed ring
// fails the whole generation, so the pipes and other rings over t error
// promptly too, as the no-hang contract asks.
//
// The view forwards the shared-memory extensions (lender, directSender)
// when t implements them, and a Communicator over it reports t's kind to
// its Observer ("tcp" or "tls" for a TCPTransport), so a stage's ring keeps
// the fast paths of the world's links. A Sub of a Sub is a Sub of the
// underlying transport. The view adds no state of its own: it is safe for
// the same concurrent use as t.
func Sub(t Transport, members []int) (Transport, error) {
	base, world := t, []int(nil)
	if s, ok := subOf(t); ok {
		base, world = s.t, s.members
	}
	n := t.Size()
	pos := -1
	seen := make(map[int]bool, len(members))
	for i, r := range members {
		switch {
		case r < 0 || r >= n:
			return nil, fmt.Errorf("%w: sub-group %v: rank %d outside [0,%d)", ErrConfig, members, r, n)
		case seen[r]:
			return nil, fmt.Errorf("%w: sub-group %v: rank %d given twice", ErrConfig, members, r)
		}
		seen[r] = true
		if r == t.Rank() {
			pos = i
		}
	}
	if pos < 0 {
		return nil, fmt.Errorf("%w: sub-group %v does not contain this rank (%d)", ErrConfig, members, t.Rank())
	}
	m := append([]int(nil), members...)
	if world != nil { // compose with the parent view's mapping
		for i, r := range m {
			m[i] = world[r]
		}
	}
	s := &subTransport{t: base, members: m, rank: pos}
	s.lend, _ = base.(lender)
	s.direct, _ = base.(directSender)
	if s.lend == nil && s.direct == nil {
		return s, nil
	}
	return &subFast{s}, nil
}

// subTransport is the view Sub returns of a transport without in-place
// extensions.
type subTransport struct {
	t       Transport // the world; never a view itself
	members []int     // local rank -> world rank
	rank    int       // this endpoint's local rank
	lend    lender
	direct  directSender
}

// subFast is the view of a transport with in-place extensions: it
// implements lender and directSender, falling back to plain Recv (into the
// scratch) and to Send (Reserve returns nil) for an extension t lacks.
type subFast struct{ *subTransport }

// subOf returns the view t is, if it is one.
func subOf(t Transport) (*subTransport, bool) {
	switch s := t.(type) {
	case *subTransport:
		return s, true
	case *subFast:
		return s.subTransport, true
	}
	return nil, false
}

// baseTransport returns the transport t is a view of, or t.
func baseTransport(t Transport) Transport {
	if s, ok := subOf(t); ok {
		return s.t
	}
	return t
}

// world maps local rank r to its world rank, or -1 when r is out of range
// (the world transport then refuses it with its own ErrConfig error).
func (s *subTransport) world(r int) int {
	if r < 0 || r >= len(s.members) {
		return -1
	}
	return s.members[r]
}

func (s *subTransport) peerErr(op string, r int) error {
	return fmt.Errorf("collective: %s: %w: peer rank %d outside the sub-group (self %d, size %d)", op, ErrConfig, r, s.rank, len(s.members))
}

// Rank implements Transport.
func (s *subTransport) Rank() int { return s.rank }

// Size implements Transport.
func (s *subTransport) Size() int { return len(s.members) }

// Generation implements Transport.
func (s *subTransport) Generation() uint64 { return s.t.Generation() }

// Stats implements Transport: the world transport's counters.
func (s *subTransport) Stats() Stats { return s.t.Stats() }

// Close implements Transport: it closes the world transport.
func (s *subTransport) Close() error { return s.t.Close() }

// Send implements Transport.
func (s *subTransport) Send(ctx context.Context, to int, h Header, payload []byte) error {
	w := s.world(to)
	if w < 0 {
		return s.peerErr("send", to)
	}
	return s.t.Send(ctx, w, h, payload)
}

// Recv implements Transport.
func (s *subTransport) Recv(ctx context.Context, from int, want Header, payload []byte) error {
	w := s.world(from)
	if w < 0 {
		return s.peerErr("recv", from)
	}
	return s.t.Recv(ctx, w, want, payload)
}

// RecvLend implements lender.
func (s *subFast) RecvLend(ctx context.Context, from int, want Header, scratch []byte) ([]byte, error) {
	w := s.world(from)
	if w < 0 {
		return nil, s.peerErr("recv", from)
	}
	if s.lend == nil {
		if err := s.t.Recv(ctx, w, want, scratch); err != nil {
			return nil, err
		}
		return scratch, nil
	}
	return s.lend.RecvLend(ctx, w, want, scratch)
}

// Release implements lender.
func (s *subFast) Release(from int) {
	if s.lend != nil {
		s.lend.Release(s.members[from])
	}
}

// SharedMemoryTo implements directSender.
func (s *subFast) SharedMemoryTo(peer int) bool {
	w := s.world(peer)
	return w >= 0 && s.direct != nil && s.direct.SharedMemoryTo(w)
}

// Reserve implements directSender.
func (s *subFast) Reserve(ctx context.Context, to, n int) ([]byte, error) {
	w := s.world(to)
	if w < 0 {
		return nil, s.peerErr("send", to)
	}
	if s.direct == nil {
		return nil, nil
	}
	return s.direct.Reserve(ctx, w, n)
}

// Commit implements directSender.
func (s *subFast) Commit(ctx context.Context, to int, h Header) error {
	return s.direct.Commit(ctx, s.members[to], h)
}

// Cancel implements directSender.
func (s *subFast) Cancel(to int) { s.direct.Cancel(s.members[to]) }
