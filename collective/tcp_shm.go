package collective

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// The TCP transport's shared-memory side (see shm.go for the region and the
// ring): sending through the ring, sleeping on a full one, and the two
// in-place extensions the communicator uses on such links, RecvLend (reduce
// straight out of the ring) and Reserve/Commit (write a forward straight
// into it).

// SharedMemoryTo reports whether payloads to peer go through shared memory.
func (t *TCPTransport) SharedMemoryTo(peer int) bool {
	l, err := t.link(peer)
	if err != nil {
		return false
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	return l.shm != nil
}

// SharedMemoryLinks counts the links whose payloads travel through shared
// memory.
func (t *TCPTransport) SharedMemoryLinks() int {
	n := 0
	for _, l := range t.links {
		if l != nil {
			l.smu.Lock()
			if l.shm != nil {
				n++
			}
			l.smu.Unlock()
		}
	}
	return n
}

// commitShm announces a payload already in the ring at pos (h.Len bytes)
// and moves the ring's head past it. The caller holds l.smu.
func (t *TCPTransport) commitShm(ctx context.Context, l *tcpLink, h Header, pos uint64) error {
	h.Kind = KindShmData
	EncodeHeader(l.shdr[:], h)
	binary.LittleEndian.PutUint64(l.shdr[headerSize:], pos)
	l.shm.head = pos + alignUp(uint64(h.Len))
	if _, err := l.conn.Write(l.shdr[:]); err != nil {
		return t.ioErr(ctx, "send", l.peer, err)
	}
	if err := l.flush(); err != nil {
		return t.ioErr(ctx, "send", l.peer, err)
	}
	t.stats.sent(int(h.Len))
	t.stats.framesSentShm.Add(1)
	return nil
}

// Reserve lends n bytes of the link's shared memory to a sender that
// fills the next frame to rank to in place, saving the copy Send makes. It
// returns nil and no error when that frame cannot travel this way (no
// shared memory on the link, or n = 0 or more than the ring): use Send. After
// a non-nil slice the link's send side stays reserved to the caller until
// Commit or Cancel.
func (t *TCPTransport) Reserve(ctx context.Context, to, n int) ([]byte, error) {
	l, err := t.link(to)
	if err != nil {
		return nil, err
	}
	l.smu.Lock()
	if l.shm == nil || !l.shm.fits(n) {
		l.smu.Unlock()
		return nil, nil
	}
	if err := l.swant.arm(ctx); err != nil {
		l.smu.Unlock()
		return nil, fmt.Errorf("collective: send rank %d: %w", to, err)
	}
	pos, err := t.reserveShm(ctx, l, n)
	if err != nil {
		l.smu.Unlock()
		return nil, err
	}
	l.shm.pending, l.shm.pendingLen = pos, n
	size := uint64(len(l.shm.tx))
	return l.shm.tx[pos%size : pos%size+uint64(n)], nil
}

// Commit sends the frame whose payload Reserve lent, as Send would send h
// with that payload, and ends the reservation.
func (t *TCPTransport) Commit(ctx context.Context, to int, h Header) error {
	l := t.links[to]
	defer l.smu.Unlock()
	h.Generation, h.Src, h.Dst, h.Len = t.cfg.Generation, uint32(t.cfg.Rank), uint32(to), uint32(l.shm.pendingLen)
	return t.commitShm(ctx, l, h, l.shm.pending)
}

// Cancel ends a reservation without sending anything; the ring is as if
// Reserve had not been called.
func (t *TCPTransport) Cancel(to int) { t.links[to].smu.Unlock() }

// shmPoll bounds each sleep of a sender on a full ring, so that it notices
// a cancelled context, a closed transport or a dead peer that cannot wake it.
const shmPoll = 10 * time.Millisecond

// reserveShm returns where in the link's ring n payload bytes go, sleeping
// while the ring is full. The caller holds l.smu and has checked fits.
func (t *TCPTransport) reserveShm(ctx context.Context, l *tcpLink, n int) (uint64, error) {
	s := l.shm
	for {
		if pos, ok := s.reserve(n); ok {
			return pos, nil
		}
		seq := s.txWake.Load()
		s.txWaiting.Store(1)
		if pos, ok := s.reserve(n); ok {
			return pos, nil
		}
		switch {
		case t.closed():
			return 0, fmt.Errorf("collective: send rank %d: %w", l.peer, ErrClosed)
		case ctx.Err() != nil:
			return 0, fmt.Errorf("collective: send rank %d: %w", l.peer, ctx.Err())
		case peerGone(l.tcp):
			return 0, fmt.Errorf("collective: send rank %d: %w: connection closed while its ring is full", l.peer, ErrPeer)
		}
		wait := shmPoll
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, max(time.Until(dl), time.Microsecond))
		}
		futexWait(s.txWake, seq, wait)
	}
}

// RecvLend is Recv for a caller that only reads the payload once (to reduce
// it into its own buffer): on a shared-memory link it returns the payload
// where it lies, saving a copy; otherwise it reads it into scratch, whose
// length is the payload size expected, and returns scratch. On success the
// link stays reserved to the caller, and the memory valid, until
// Release(from); on error nothing is held.
func (t *TCPTransport) RecvLend(ctx context.Context, from int, want Header, scratch []byte) ([]byte, error) {
	l, err := t.link(from)
	if err != nil {
		return nil, err
	}
	l.rmu.Lock()
	h, pos, err := t.next(ctx, l, want, len(scratch))
	if err == nil {
		if h.Kind == KindShmData {
			var view []byte
			if view, l.shm.lent, err = l.shm.view(pos, len(scratch)); err == nil {
				t.stats.received(len(scratch))
				return view, nil
			}
		} else if _, err = io.ReadFull(l.conn, scratch); err == nil {
			t.stats.received(len(scratch))
			return scratch, nil
		} else {
			err = t.ioErr(ctx, "recv", from, err)
		}
	}
	l.rmu.Unlock()
	return nil, err
}

// Release ends a successful RecvLend on the link from rank from.
func (t *TCPTransport) Release(from int) {
	l := t.links[from]
	if l.shm != nil && l.shm.lent != 0 {
		l.shm.consume(l.shm.lent)
		l.shm.lent = 0
	}
	l.rmu.Unlock()
}
