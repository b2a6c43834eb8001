package collective

import (
	"bufio"
	"net"
	"sync"
)

// tlsBatchBytes is how much ciphertext a TLS link gathers before a write
// system call, and reads at most per call.
const tlsBatchBytes = 256 << 10

// tlsSocket is the socket under a TLS link. TLS writes one record (at most
// 16 KiB) per Write to its connection and reads about one per Read; on
// loopback those system calls, not the cipher, were the larger cost of a
// 16 MiB all-reduce (46% of CPU). Once the handshake is done (batch), the
// records of a frame are gathered and sent together when the frame is
// complete (flush) or the batch is full; reads always go through a
// buffer. The mutex covers the rare record TLS writes on its own (a key
// update answered while reading) racing the sender's flush.
type tlsSocket struct {
	*net.TCPConn
	r *bufio.Reader

	mu    sync.Mutex
	on    bool
	batch []byte
}

func newTLSSocket(c *net.TCPConn) *tlsSocket {
	return &tlsSocket{TCPConn: c, r: bufio.NewReaderSize(c, tlsBatchBytes)}
}

// Read implements net.Conn.
func (s *tlsSocket) Read(p []byte) (int, error) { return s.r.Read(p) }

// Write implements net.Conn: straight through until batching starts, then
// into the batch.
func (s *tlsSocket) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.on {
		return s.TCPConn.Write(p)
	}
	if len(s.batch)+len(p) > cap(s.batch) {
		if err := s.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > cap(s.batch) {
		return s.TCPConn.Write(p)
	}
	s.batch = append(s.batch, p...)
	return len(p), nil
}

// startBatching gathers writes from now on; call it once the link is up
// and every write is followed by a flush.
func (s *tlsSocket) startBatching() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on, s.batch = true, make([]byte, 0, tlsBatchBytes)
}

// flush sends what the batch holds.
func (s *tlsSocket) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushLocked()
}

func (s *tlsSocket) flushLocked() error {
	if len(s.batch) == 0 {
		return nil
	}
	_, err := s.TCPConn.Write(s.batch)
	s.batch = s.batch[:0]
	return err
}

// Close implements net.Conn: it sends what is left (TLS's closing alert)
// within whatever write deadline is set, then closes the socket.
func (s *tlsSocket) Close() error {
	_ = s.flush()
	return s.TCPConn.Close()
}
