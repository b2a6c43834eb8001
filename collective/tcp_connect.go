package collective

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// handshakeTimeout bounds how long an accepted connection may take to say
// hello, so a silent stranger cannot hold a setup slot.
const handshakeTimeout = 10 * time.Second

// NewTCPTransport builds the full mesh for cfg.Rank and returns once every
// peer is connected, or fails when ctx ends. Rank i dials every rank j < i
// (retrying while the peer is not up yet, or is still a process of another
// generation) and accepts from every rank j > i.
//
// With cfg.TLS each connection first runs the TLS handshake (see
// TCPConfig.TLS). Handshake: the dialer sends a Hello frame (generation, src, dst); the
// acceptor answers with a Welcome frame carrying its own generation and rank,
// and keeps the connection only if the hello was for this generation, for
// this rank, from an expected rank not yet connected. A refused hello is
// counted in Stats (RejectedGeneration or RejectedRank) and its connection
// closed. The listener is closed once the mesh is complete.
func NewTCPTransport(ctx context.Context, cfg TCPConfig) (*TCPTransport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	n, me := len(cfg.Peers), cfg.Rank
	t := &TCPTransport{cfg: cfg, log: log, links: make([]*tcpLink, n), done: make(chan struct{})}
	ln := cfg.Listener
	if ln == nil && n > 1 {
		var err error
		if ln, err = net.Listen("tcp", cfg.Peers[me]); err != nil {
			return nil, fmt.Errorf("%w: listen %s: %v", ErrHandshake, cfg.Peers[me], err)
		}
	}
	if n == 1 {
		if ln != nil {
			_ = ln.Close()
		}
		return t, nil
	}

	type result struct {
		peer int
		conn net.Conn
		shm  *shmLink
		err  error
	}
	drop := func(r result) {
		if r.conn != nil {
			_ = r.conn.Close()
		}
		if r.shm != nil {
			r.shm.reg.unmap()
		}
	}
	results := make(chan result, 2*n)
	setupCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup

	// Accept loop: ranks above me dial in.
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed below
			}
			wg.Go(func() {
				sc, err := t.secure(setupCtx, c, "")
				if err != nil {
					_ = c.Close()
					return
				}
				peer, shm, err := t.welcome(setupCtx, sc)
				if err != nil {
					_ = sc.Close()
					if !errors.Is(err, errRefused) {
						log.Debug("handshake failed", zap.Error(err))
					}
					return
				}
				r := result{peer: peer, conn: sc, shm: shm}
				select {
				case results <- r:
				case <-setupCtx.Done():
					drop(r)
				}
			})
		}
	})
	// Dial ranks below me.
	for j := range me {
		wg.Go(func() {
			c, shm, err := t.dial(setupCtx, j)
			r := result{peer: j, conn: c, shm: shm, err: err}
			select {
			case results <- r:
			case <-setupCtx.Done():
				drop(r)
			}
		})
	}

	var firstErr error
	for have := 0; have < n-1 && firstErr == nil; {
		select {
		case r := <-results:
			switch {
			case r.err != nil:
				firstErr = r.err
			case t.links[r.peer] != nil: // a second hello from the same rank
				t.stats.rejectedRank.Add(1)
				drop(r)
			default:
				t.links[r.peer] = newTCPLink(r.conn, r.peer, r.shm)
				have++
			}
		case <-ctx.Done():
			firstErr = fmt.Errorf("%w: rank %d: mesh incomplete: %w%s", ErrHandshake, me, ctx.Err(), t.trouble.describe())
		}
	}
	cancel()
	_ = ln.Close()
	wg.Wait()
	close(results)
	for r := range results { // connections that completed after the loop ended
		if r.conn != nil {
			if t.links[r.peer] == nil && firstErr == nil {
				t.links[r.peer] = newTCPLink(r.conn, r.peer, r.shm)
			} else {
				drop(r)
			}
		}
	}
	if firstErr != nil {
		_ = t.Close()
		return nil, firstErr
	}
	for _, l := range t.links {
		if l != nil && cfg.SocketBufferBytes > 0 {
			_ = l.tcp.SetReadBuffer(cfg.SocketBufferBytes)
			_ = l.tcp.SetWriteBuffer(cfg.SocketBufferBytes)
		}
	}
	log.Debug("mesh up", zap.Int("rank", me), zap.Int("size", n), zap.Uint64("generation", cfg.Generation),
		zap.Int("shared_memory_links", t.SharedMemoryLinks()))
	return t, nil
}

// welcome runs the acceptor's side of the handshake and returns the peer
// rank, and the link's shared memory if the peer offered some this process
// could map.
func (t *TCPTransport) welcome(ctx context.Context, c net.Conn) (int, *shmLink, error) {
	dl := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.SetDeadline(dl)
	defer c.SetDeadline(time.Time{})
	var buf [headerSize]byte
	h, err := readHeader(c, buf[:], 0)
	if err != nil {
		return 0, nil, err
	}
	me, n := t.cfg.Rank, len(t.cfg.Peers)
	var refusal error
	switch {
	case h.Kind != KindHello:
		return 0, nil, fmt.Errorf("%w: first frame is not a hello", ErrBadFrame)
	case h.Generation != t.cfg.Generation:
		t.stats.rejectedGen.Add(1)
		t.log.Warn("refused connection from another generation",
			zap.Uint64("theirs", h.Generation), zap.Uint64("ours", t.cfg.Generation), zap.Uint32("rank", h.Src))
		refusal = errRefused
	case int(h.Dst) != me || int(h.Src) <= me || int(h.Src) >= n:
		t.stats.rejectedRank.Add(1)
		t.log.Warn("refused connection from unexpected rank", zap.Uint32("src", h.Src), zap.Uint32("dst", h.Dst))
		refusal = errRefused
	}
	// The welcome tells the dialer our generation and rank; Seq 1 means the
	// connection is kept, 0 that it is refused.
	reply := Header{Kind: KindWelcome, Op: OpHandshake, DType: 1, Generation: t.cfg.Generation,
		Src: uint32(me), Dst: h.Src}
	if refusal == nil {
		reply.Seq = 1
	}
	EncodeHeader(buf[:], reply)
	if _, err := c.Write(buf[:]); err != nil {
		return 0, nil, err
	}
	if refusal != nil {
		return 0, nil, refusal
	}
	shm, err := t.answerShm(c, int(h.Src))
	if err != nil {
		return 0, nil, err
	}
	return int(h.Src), shm, nil
}

// The shared-memory exchange follows a kept welcome: the dialer sends an
// offer (a data frame of op handshake whose payload is empty, or names a
// region it created, see encodeShmOffer) and the acceptor answers with an
// empty frame whose Seq is 1 if it mapped the region, 0 if not. Either way
// the dialer then unlinks the file, so it lives only as long as the setup.
const shmOfferMax = 128

func (t *TCPTransport) answerShm(c net.Conn, peer int) (*shmLink, error) {
	var buf [headerSize]byte
	h, err := readHeader(c, buf[:], shmOfferMax)
	if err != nil {
		return nil, err
	}
	if h.Kind != KindData || h.Op != OpHandshake || h.Generation != t.cfg.Generation || int(h.Src) != peer || int(h.Dst) != t.cfg.Rank {
		return nil, fmt.Errorf("%w: expected the shared-memory offer, got %v", ErrBadFrame, h)
	}
	offer := make([]byte, h.Len)
	if _, err := io.ReadFull(c, offer); err != nil {
		return nil, err
	}
	var reg *shmRegion
	if len(offer) > 0 && t.cfg.ShmRingBytes > 0 {
		name, nonce, ring, err := decodeShmOffer(offer)
		if err == nil {
			reg, err = openShm(name, nonce, ring)
		}
		if err != nil { // another host, another user, no /dev/shm: the socket carries everything
			t.log.Debug("shared memory refused", zap.Int("peer", peer), zap.Error(err))
		}
	}
	answer := Header{Kind: KindData, Op: OpHandshake, DType: 1, Generation: t.cfg.Generation,
		Src: uint32(t.cfg.Rank), Dst: uint32(peer)}
	if reg != nil {
		answer.Seq = 1
	}
	EncodeHeader(buf[:], answer)
	if _, err := c.Write(buf[:]); err != nil {
		if reg != nil {
			reg.unmap()
		}
		return nil, err
	}
	if reg == nil {
		return nil, nil
	}
	return newShmLink(reg, false), nil
}

// offerShm runs the dialer's side of the shared-memory exchange with rank j.
func (t *TCPTransport) offerShm(c net.Conn, j int) (*shmLink, error) {
	var reg *shmRegion
	var name string
	var offer []byte
	if t.cfg.ShmRingBytes > 0 {
		var err error
		if reg, name, err = createShm(t.cfg.ShmRingBytes); err != nil {
			t.log.Debug("no shared memory", zap.Error(err))
		} else {
			defer removeShm(name)
			offer = encodeShmOffer(name, reg)
		}
	}
	fail := func(err error) (*shmLink, error) {
		if reg != nil {
			reg.unmap()
		}
		return nil, err
	}
	var buf [headerSize]byte
	EncodeHeader(buf[:], Header{Kind: KindData, Op: OpHandshake, DType: 1, Generation: t.cfg.Generation,
		Src: uint32(t.cfg.Rank), Dst: uint32(j), Len: uint32(len(offer))})
	if _, err := (&net.Buffers{buf[:], offer}).WriteTo(c); err != nil {
		return fail(err)
	}
	h, err := readHeader(c, buf[:], 0)
	if err != nil {
		return fail(err)
	}
	if h.Kind != KindData || h.Op != OpHandshake || int(h.Src) != j || h.Generation != t.cfg.Generation {
		return fail(fmt.Errorf("%w: expected the shared-memory answer, got %v", ErrBadFrame, h))
	}
	if h.Seq != 1 {
		return fail(nil)
	}
	return newShmLink(reg, true), nil
}

// dial connects to rank j and runs the dialer's side of the handshake,
// retrying until ctx ends while j is unreachable or answers for another
// generation (a process of the previous plan may still hold the address).
func (t *TCPTransport) dial(ctx context.Context, j int) (net.Conn, *shmLink, error) {
	backoff := 5 * time.Millisecond
	var last error
	for {
		c, shm, err := t.dialOnce(ctx, j)
		if err == nil {
			return c, shm, nil
		}
		last = err
		t.trouble.note(t.cfg.Peers[j], err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w: rank %d dialing rank %d at %s: %w (last: %v)",
				ErrHandshake, t.cfg.Rank, j, t.cfg.Peers[j], ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (t *TCPTransport) dialOnce(ctx context.Context, j int) (net.Conn, *shmLink, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", t.cfg.Peers[j])
	if err != nil {
		return nil, nil, err
	}
	c, err := t.secure(ctx, nc, t.cfg.Peers[j])
	if err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	dl := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(pastDeadline) })
	defer stop()
	var buf [headerSize]byte
	EncodeHeader(buf[:], Header{Kind: KindHello, Op: OpHandshake, DType: 1, Generation: t.cfg.Generation,
		Src: uint32(t.cfg.Rank), Dst: uint32(j)})
	if _, err := c.Write(buf[:]); err != nil {
		_ = c.Close()
		return nil, nil, err
	}
	h, err := readHeader(c, buf[:], 0)
	if err == nil {
		switch {
		case h.Kind != KindWelcome:
			err = fmt.Errorf("%w: answer to hello is not a welcome", ErrBadFrame)
		case h.Generation != t.cfg.Generation:
			t.stats.rejectedGen.Add(1)
			err = fmt.Errorf("%w: rank %d answers for generation %d, want %d", ErrHandshake, j, h.Generation, t.cfg.Generation)
		case int(h.Src) != j:
			t.stats.rejectedRank.Add(1)
			err = fmt.Errorf("%w: %s answers as rank %d, want %d", ErrHandshake, t.cfg.Peers[j], h.Src, j)
		case h.Seq != 1:
			err = fmt.Errorf("%w: rank %d refused the connection", ErrHandshake, j)
		}
	}
	var shm *shmLink
	if err == nil {
		shm, err = t.offerShm(c, j)
	}
	if err != nil {
		_ = c.Close()
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, shm, nil
}

// secure runs the TLS handshake on a new connection when the transport has
// TLS, as the client when peer (the address dialled) is set and as the
// server otherwise, within the handshake timeout; without TLS it returns c.
// A connection the acceptor refuses is counted, and logged with its reason
// (a warning for the first from each host, then at debug level: a refused
// dialer retries several times a second); a dialer's failure is returned.
func (t *TCPTransport) secure(ctx context.Context, c net.Conn, peer string) (net.Conn, error) {
	if t.cfg.TLS == nil {
		return c, nil
	}
	sock := newTLSSocket(c.(*net.TCPConn))
	var tc *tls.Conn
	if peer == "" {
		tc = tls.Server(sock, t.cfg.TLS)
	} else {
		cfg := t.cfg.TLS
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(peer)
		}
		tc = tls.Client(sock, cfg)
	}
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		if peer == "" && ctx.Err() == nil {
			t.stats.rejectedTLS.Add(1)
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			logf := t.log.Debug
			if t.trouble.note(host, err) {
				logf = t.log.Warn
			}
			logf("refused a TLS connection", zap.String("remote", c.RemoteAddr().String()), zap.Error(err))
		}
		return nil, fmt.Errorf("%w: TLS with %s: %w", ErrHandshake, c.RemoteAddr(), err)
	}
	return tc, nil
}

// rawTCP is the TCP socket under c, and the batching socket when c is TLS.
func rawTCP(c net.Conn) (*net.TCPConn, *tlsSocket) {
	if tc, ok := c.(*tls.Conn); ok {
		s := tc.NetConn().(*tlsSocket)
		return s.TCPConn, s
	}
	return c.(*net.TCPConn), nil
}

// setupTrouble keeps the last failure seen with each remote address while
// the mesh is built, so that a mesh that never completes says why (a peer
// that refused our certificate, one we refused) rather than only that the
// deadline passed.
type setupTrouble struct {
	mu   sync.Mutex
	last map[string]error
}

// note records err as addr's last and reports whether addr is new.
func (s *setupTrouble) note(addr string, err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[string]error{}
	}
	_, seen := s.last[addr]
	s.last[addr] = err
	return !seen
}

// describe is "" or "; last errors: ADDR: ERR, ..." in address order.
func (s *setupTrouble) describe() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.last) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; last errors:")
	for i, a := range slices.Sorted(maps.Keys(s.last)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s: %v", a, s.last[a])
	}
	return b.String()
}
