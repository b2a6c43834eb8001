package collective

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// TCPConfig configures one rank's TCP endpoint.
type TCPConfig struct {
	// Generation is the plan generation; frames and connections of any other
	// generation are refused and counted.
	Generation uint64
	// Rank is this endpoint's rank, an index into Peers.
	Rank int
	// Peers holds every rank's listen address ("host:port"), indexed by rank.
	Peers []string
	// Listener, if set, is used instead of listening on Peers[Rank]; the
	// transport takes ownership and closes it once the mesh is up. Tests and
	// the benchmark launcher pass pre-bound 127.0.0.1:0 listeners this way so
	// that no port is ever raced for.
	Listener net.Listener
	// SocketBufferBytes sets SO_SNDBUF and SO_RCVBUF; 0 keeps the OS default.
	SocketBufferBytes int
	// MaxFrameBytes bounds the payload of a frame this endpoint accepts.
	MaxFrameBytes int
	// ShmRingBytes is the size of each direction's ring in shared memory on
	// a link whose two ends turn out to be on one host (see shm.go); 0 sends
	// every payload through the socket. A multiple of 64.
	ShmRingBytes int
	// TLS, if set, wraps every connection in TLS before the handshake: the
	// acceptor is the TLS server, the dialer the client, and the config
	// decides whom each end admits (it should require and verify a client
	// certificate). A peer it refuses is logged and counted in Stats
	// (RejectedTLS), and never sees a frame. Shared-memory payloads between
	// ranks of one host do not cross the network and are not encrypted.
	TLS *tls.Config
	// Logger receives connection events; nil means zap.NewNop().
	Logger *zap.Logger
}

// DefaultTCPConfig returns the defaults; the caller fills Generation, Rank and Peers.
func DefaultTCPConfig() TCPConfig {
	return TCPConfig{SocketBufferBytes: 4 << 20, MaxFrameBytes: DefaultMaxFrameBytes, ShmRingBytes: DefaultShmRingBytes}
}

// Validate reports the first problem with c, wrapping ErrConfig.
func (c TCPConfig) Validate() error {
	ringErr := CheckShmRing(c.ShmRingBytes)
	switch {
	case len(c.Peers) == 0:
		return fmt.Errorf("%w: tcp: Peers is empty", ErrConfig)
	case c.Rank < 0 || c.Rank >= len(c.Peers):
		return fmt.Errorf("%w: tcp: Rank %d outside [0,%d)", ErrConfig, c.Rank, len(c.Peers))
	case c.MaxFrameBytes <= 0:
		return fmt.Errorf("%w: tcp: MaxFrameBytes %d must be positive", ErrConfig, c.MaxFrameBytes)
	case c.SocketBufferBytes < 0:
		return fmt.Errorf("%w: tcp: SocketBufferBytes %d is negative", ErrConfig, c.SocketBufferBytes)
	case ringErr != nil:
		return fmt.Errorf("%w: tcp: ShmRingBytes: %v", ErrConfig, ringErr)
	case !littleEndian:
		return fmt.Errorf("%w: tcp: the wire format needs a little-endian host", ErrConfig)
	}
	for i, p := range c.Peers {
		if i != c.Rank || c.Listener == nil {
			if _, _, err := net.SplitHostPort(p); err != nil {
				return fmt.Errorf("%w: tcp: Peers[%d] %q: %v", ErrConfig, i, p, err)
			}
		}
	}
	return nil
}

// TCPTransport is a Transport over one TCP connection per pair of ranks (a
// full mesh, built by NewTCPTransport). Frames are written with one writev
// (header + caller's payload, no copy) and read straight into the caller's
// buffer; between two ranks of one host the payloads go through shared
// memory instead (shm.go).
type TCPTransport struct {
	cfg   TCPConfig
	log   *zap.Logger
	links []*tcpLink // indexed by peer rank; nil for self
	stats counters
	// trouble collects setup failures for NewTCPTransport's error.
	trouble setupTrouble
	done    chan struct{}
	once    sync.Once
}

// tcpLink is the connection to one peer. The send half and the receive half
// each have their own lock, header scratch and context watch, so one sender
// and one receiver use a link concurrently without contention.
type tcpLink struct {
	conn net.Conn     // the socket, or TLS over it
	tcp  *net.TCPConn // the socket
	tlsw *tlsSocket   // under TLS: what must be flushed after each frame
	peer int
	shm  *shmLink // nil: payloads travel inline; set to nil (and unmapped) by Close under both locks

	smu   sync.Mutex
	shdr  [headerSize + 8]byte // header, and a KindShmData frame's ring position
	iov   [2][]byte            // header and payload of the frame being written
	bufs  net.Buffers          // view of iov consumed by WriteTo; reset per frame
	swant ctxWatch

	rmu   sync.Mutex
	rhdr  [headerSize + 8]byte
	rwant ctxWatch
}

func newTCPLink(c net.Conn, peer int, shm *shmLink) *tcpLink {
	l := &tcpLink{conn: c, peer: peer, shm: shm}
	l.tcp, l.tlsw = rawTCP(c)
	if l.tlsw != nil { // the mesh handshake is over: every later write goes through flush
		l.tlsw.startBatching()
	}
	l.swant.set = c.SetWriteDeadline
	l.rwant.set = c.SetReadDeadline
	return l
}

// Rank implements Transport.
func (t *TCPTransport) Rank() int { return t.cfg.Rank }

// Size implements Transport.
func (t *TCPTransport) Size() int { return len(t.cfg.Peers) }

// Generation implements Transport.
func (t *TCPTransport) Generation() uint64 { return t.cfg.Generation }

// Stats implements Transport.
func (t *TCPTransport) Stats() Stats { return t.stats.snapshot() }

// Close implements Transport: it closes every connection, which makes the
// peers' pending calls on those links fail with ErrPeer. Shared memory is
// unmapped once the calls pending on a link have returned.
func (t *TCPTransport) Close() error {
	t.once.Do(func() {
		close(t.done)
		for _, l := range t.links {
			if l != nil {
				l.swant.release()
				l.rwant.release()
				_ = l.conn.Close()
			}
		}
		for _, l := range t.links {
			if l != nil {
				if s := l.shm; s != nil { // a sender asleep on a full ring: wake it to see done
					s.txWake.Add(1)
					futexWake(s.txWake)
				}
				l.smu.Lock()
				l.rmu.Lock()
				if l.shm != nil {
					l.shm.reg.unmap()
					l.shm = nil
				}
				l.rmu.Unlock()
				l.smu.Unlock()
			}
		}
	})
	return nil
}

func (t *TCPTransport) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

func (t *TCPTransport) link(peer int) (*tcpLink, error) {
	if peer < 0 || peer >= len(t.links) || t.links[peer] == nil {
		return nil, fmt.Errorf("%w: peer rank %d (self %d, size %d)", ErrConfig, peer, t.cfg.Rank, len(t.links))
	}
	if t.closed() {
		return nil, ErrClosed
	}
	return t.links[peer], nil
}

func (t *TCPTransport) ioErr(ctx context.Context, op string, peer int, err error) error {
	if t.closed() && ctx.Err() == nil {
		return fmt.Errorf("collective: %s rank %d: %w (%v)", op, peer, ErrClosed, err)
	}
	return wrapIO(ctx, op, peer, err)
}

// Send implements Transport.
func (t *TCPTransport) Send(ctx context.Context, to int, h Header, payload []byte) error {
	l, err := t.link(to)
	if err != nil {
		return err
	}
	if len(payload) > t.cfg.MaxFrameBytes {
		return fmt.Errorf("collective: send %d bytes: %w: over the %d-byte frame limit", len(payload), ErrBufferSize, t.cfg.MaxFrameBytes)
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	if err := l.swant.arm(ctx); err != nil {
		return fmt.Errorf("collective: send rank %d: %w", to, err)
	}
	h.Generation, h.Src, h.Dst, h.Len = t.cfg.Generation, uint32(t.cfg.Rank), uint32(to), uint32(len(payload))
	if l.shm != nil && h.Kind == KindData && l.shm.fits(len(payload)) {
		pos, err := t.reserveShm(ctx, l, len(payload))
		if err != nil {
			return err
		}
		l.shm.put(pos, payload)
		return t.commitShm(ctx, l, h, pos)
	}
	EncodeHeader(l.shdr[:], h)
	if err := l.writeFrame(payload); err != nil {
		return t.ioErr(ctx, "send", to, err)
	}
	t.stats.sent(len(payload))
	return nil
}

// Recv implements Transport.
func (t *TCPTransport) Recv(ctx context.Context, from int, want Header, payload []byte) error {
	l, err := t.link(from)
	if err != nil {
		return err
	}
	l.rmu.Lock()
	defer l.rmu.Unlock()
	h, pos, err := t.next(ctx, l, want, len(payload))
	if err != nil {
		return err
	}
	if h.Kind == KindShmData {
		view, end, err := l.shm.view(pos, len(payload))
		if err != nil {
			return err
		}
		copy(payload, view)
		l.shm.consume(end)
	} else if _, err := io.ReadFull(l.conn, payload); err != nil {
		return t.ioErr(ctx, "recv", from, err)
	}
	t.stats.received(len(payload))
	return nil
}

// next reads frame headers from l until one of this generation for this
// link arrives, discarding (and counting) strays, and returns it, with its
// ring position for a KindShmData frame; its payload is still to be taken.
// The caller holds l.rmu.
func (t *TCPTransport) next(ctx context.Context, l *tcpLink, want Header, n int) (Header, uint64, error) {
	from := l.peer
	if err := l.rwant.arm(ctx); err != nil {
		return Header{}, 0, fmt.Errorf("collective: recv rank %d: %w", from, err)
	}
	want.Generation, want.Src, want.Dst, want.Len = t.cfg.Generation, uint32(from), uint32(t.cfg.Rank), uint32(n)
	for {
		h, err := readHeader(l.conn, l.rhdr[:headerSize], t.cfg.MaxFrameBytes)
		if err != nil {
			return Header{}, 0, t.ioErr(ctx, "recv", from, err)
		}
		var pos uint64
		if h.Kind == KindShmData {
			if l.shm == nil {
				return Header{}, 0, fmt.Errorf("collective: recv rank %d: %w: shared-memory frame on a socket-only link", from, ErrBadFrame)
			}
			if _, err := io.ReadFull(l.conn, l.rhdr[headerSize:]); err != nil {
				return Header{}, 0, t.ioErr(ctx, "recv", from, err)
			}
			pos = binary.LittleEndian.Uint64(l.rhdr[headerSize:])
		}
		asData := h
		if asData.Kind == KindShmData {
			asData.Kind = KindData
		}
		v, jerr := judge(asData, want)
		switch v {
		case rejectGen, rejectRank:
			t.stats.reject(v)
			t.log.Warn("rejected frame", zap.Int("peer", from), zap.Error(jerr))
			if h.Kind == KindShmData {
				_, end, err := l.shm.view(pos, int(h.Len))
				if err != nil {
					return Header{}, 0, err
				}
				l.shm.consume(end)
			} else if _, err := io.CopyN(io.Discard, l.conn, int64(h.Len)); err != nil {
				return Header{}, 0, t.ioErr(ctx, "recv", from, err)
			}
			continue
		case fatalMismatch:
			return Header{}, 0, fmt.Errorf("collective: recv rank %d: %w", from, jerr)
		}
		return h, pos, nil
	}
}

// sendRaw writes h exactly as given (no stamping) followed by payload. Tests
// use it to play a stale or confused peer on a real connection.
func (t *TCPTransport) sendRaw(to int, h Header, payload []byte) error {
	l, err := t.link(to)
	if err != nil {
		return err
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	EncodeHeader(l.shdr[:], h)
	return l.writeFrame(payload)
}

// writeFrame writes the encoded header and payload with one writev,
// without copying or allocating (over TLS: as records gathered into one
// write per tlsBatchBytes). The caller holds l.smu.
func (l *tcpLink) writeFrame(payload []byte) error {
	l.iov[0], l.iov[1] = l.shdr[:headerSize], payload
	l.bufs = l.iov[:]
	_, err := l.bufs.WriteTo(l.conn)
	l.iov[1] = nil // do not retain the caller's buffer
	if err == nil {
		err = l.flush()
	}
	return err
}

// flush sends a TLS link's gathered records; the caller holds l.smu.
func (l *tcpLink) flush() error {
	if l.tlsw == nil {
		return nil
	}
	return l.tlsw.flush()
}

// ctxWatch applies a context to one direction of a connection: its deadline
// becomes the socket deadline and its cancellation forces the deadline into
// the past, which unblocks a pending read or write. Arming with a context that
// has the same Done channel and deadline as the last one costs nothing, so a
// whole operation pays for at most one registration per link direction (and
// none for context.Background).
type ctxWatch struct {
	set func(time.Time) error

	mu    sync.Mutex
	done  <-chan struct{}
	dl    time.Time
	armed bool
	stop  func() bool
}

var pastDeadline = time.Unix(1, 0)

func (w *ctxWatch) arm(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := ctx.Done()
	dl, _ := ctx.Deadline()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.armed && w.done == done && w.dl.Equal(dl) {
		return nil
	}
	if w.stop != nil {
		w.stop()
		w.stop = nil
	}
	w.done, w.dl, w.armed = done, dl, true
	if err := w.set(dl); err != nil {
		return err
	}
	if done != nil {
		w.stop = context.AfterFunc(ctx, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.done == done {
				_ = w.set(pastDeadline)
			}
		})
	}
	return nil
}

// release drops the registration on the last context.
func (w *ctxWatch) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop != nil {
		w.stop()
		w.stop = nil
	}
	w.armed = false
}

var errRefused = errors.New("refused")
