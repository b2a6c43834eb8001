package collective

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Same-host links. Two ranks on one machine still meet over TCP (the
// handshake, the frame headers and the liveness of the peer all stay on the
// socket), but when both can map one file in /dev/shm the payloads of data
// frames travel through it instead of through the kernel's TCP stack: the
// sender copies a payload into its ring and writes only the header and the
// payload's ring position on the socket (a KindShmData frame); the receiver
// reads the header, takes the payload from the ring (or reduces straight out
// of it, see RecvLend) and publishes how far it has consumed. When the ring
// is full the sender sleeps on a futex in the region until the receiver
// frees space (the back-pressure a full socket buffer gives), checking its
// context, the transport and the peer's socket every few milliseconds; a
// payload larger than the whole ring travels inline, as on a plain TCP link.
//
// Region layout: a 4 KiB control page, then ring 0 (written by the dialer,
// read by the acceptor) and ring 1 (the other way), each ring bytes long.
//
//	offset size field
//	0      8    magic "LOOMSHM1"
//	8      16   nonce, also sent in the offer (proves it is the offered file)
//	24     8    ring bytes
//	128    8    ring 0 tail: bytes of ring 0 the acceptor has consumed
//	256    8    ring 1 tail: bytes of ring 1 the dialer has consumed
//	384    4    ring 0 wake word: a futex its sender sleeps on when it is full
//	388    4    ring 0 waiting flag: set by a sleeping sender, cleared by the waker
//	512    4    ring 1 wake word
//	516    4    ring 1 waiting flag
//
// Positions are absolute byte counts since the link began; position p lies
// at p mod ring. Payloads start on 64-byte boundaries and never wrap: one
// that would is placed at the start of the next lap instead.
const (
	shmCtlBytes = 4096
	shmMagic    = 0x314d48534d4f4f4c // "LOOMSHM1"
	shmAlign    = 64
	shmPrefix   = "loom-"
	// DefaultShmRingBytes is each direction's ring on a same-host link: four
	// 1 MiB chunks in flight (eight of 512 KiB).
	DefaultShmRingBytes = 4 << 20
	// MaxShmRingBytes bounds a ring (each direction of each link).
	MaxShmRingBytes = 1 << 30
)

// shmDir is where same-host links keep their rings: a tmpfs on every Linux
// distribution, so the pages are memory, not disk.
const shmDir = "/dev/shm"

// shmRegion is one mapped region.
type shmRegion struct {
	mem  []byte
	ring int
}

func shmSize(ring int) int { return shmCtlBytes + 2*ring }

func (r *shmRegion) nonce() []byte { return r.mem[8:24] }

func (r *shmRegion) stamp() {
	binary.LittleEndian.PutUint64(r.mem[0:], shmMagic)
	binary.LittleEndian.PutUint64(r.mem[24:], uint64(r.ring))
}

func (r *shmRegion) check(nonce []byte) error {
	switch {
	case binary.LittleEndian.Uint64(r.mem[0:]) != shmMagic:
		return fmt.Errorf("%w: shared-memory region has a bad magic", ErrBadFrame)
	case string(r.nonce()) != string(nonce):
		return fmt.Errorf("%w: shared-memory region is not the one offered", ErrBadFrame)
	case binary.LittleEndian.Uint64(r.mem[24:]) != uint64(r.ring):
		return fmt.Errorf("%w: shared-memory ring size differs", ErrBadFrame)
	}
	return nil
}

// buf is ring i; tail is its consumed-bytes counter.
func (r *shmRegion) buf(i int) []byte {
	off := shmCtlBytes + i*r.ring
	return r.mem[off : off+r.ring : off+r.ring]
}

func (r *shmRegion) tail(i int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&r.mem[128*(i+1)]))
}

func (r *shmRegion) wakeWord(i int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&r.mem[384+128*i]))
}

func (r *shmRegion) waiting(i int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&r.mem[388+128*i]))
}

// validShmName accepts only names createShm makes, so that a peer's offer
// cannot point this process at any other file.
func validShmName(name string) bool {
	rest, ok := strings.CutPrefix(name, shmPrefix)
	if !ok || len(rest) == 0 || len(rest) > 64 {
		return false
	}
	for _, c := range rest {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') && c != '-' {
			return false
		}
	}
	return true
}

// shmOffer is the dialer's proposal, sent after the welcome: the region's
// file name, its nonce and ring size. An empty offer means "no shared memory".
// The name is padded with NULs to whole 4-byte words (the frame's dtype).
func encodeShmOffer(name string, r *shmRegion) []byte {
	b := make([]byte, (24+len(name)+3)&^3)
	copy(b, r.nonce())
	binary.LittleEndian.PutUint64(b[16:], uint64(r.ring))
	copy(b[24:], name)
	return b
}

func decodeShmOffer(b []byte) (name string, nonce []byte, ring int, err error) {
	if len(b) < 24 || len(b) > 24+64+len(shmPrefix) {
		return "", nil, 0, fmt.Errorf("%w: shared-memory offer of %d bytes", ErrBadFrame, len(b))
	}
	ring64 := binary.LittleEndian.Uint64(b[16:])
	if ring64 < shmAlign || ring64 > MaxShmRingBytes || ring64%shmAlign != 0 {
		return "", nil, 0, fmt.Errorf("%w: shared-memory ring of %d bytes", ErrBadFrame, ring64)
	}
	return strings.TrimRight(string(b[24:]), "\x00"), b[:16], int(ring64), nil
}

// shmLink is one connection's view of its region: the ring it writes (tx)
// and the ring it reads (rx). head is touched only by the sender (under the
// link's send lock), the rx side only by the receiver (under the receive lock).
type shmLink struct {
	reg                  *shmRegion
	tx, rx               []byte
	txTail               *atomic.Uint64 // written by the peer as it consumes tx
	rxTail               *atomic.Uint64 // written by us as we consume rx
	txWake, rxWake       *atomic.Uint32 // futex words: we sleep on txWake, wake the peer on rxWake
	txWaiting, rxWaiting *atomic.Uint32
	head                 uint64 // next free position in tx
	pending              uint64 // position of the frame Reserve lent (under the send lock)
	pendingLen           int
	lent                 uint64 // rx position to publish when a lent payload is released
}

func newShmLink(r *shmRegion, dialer bool) *shmLink {
	txi, rxi := 0, 1
	if !dialer {
		txi, rxi = 1, 0
	}
	return &shmLink{reg: r, tx: r.buf(txi), rx: r.buf(rxi), txTail: r.tail(txi), rxTail: r.tail(rxi),
		txWake: r.wakeWord(txi), rxWake: r.wakeWord(rxi), txWaiting: r.waiting(txi), rxWaiting: r.waiting(rxi)}
}

func alignUp(n uint64) uint64 { return (n + shmAlign - 1) &^ (shmAlign - 1) }

// fits reports whether a payload of n bytes can ever go through the ring.
func (s *shmLink) fits(n int) bool { return n > 0 && alignUp(uint64(n)) <= uint64(len(s.tx)) }

// reserve finds room for n payload bytes in tx and returns their position,
// or false when the ring has not enough free space now (or never will: see
// fits).
func (s *shmLink) reserve(n int) (uint64, bool) {
	size, need := uint64(len(s.tx)), alignUp(uint64(n))
	if !s.fits(n) {
		return 0, false
	}
	pos := s.head
	if pos%size+need > size { // would wrap: start the next lap
		pos += size - pos%size
	}
	// The frame must not overlap, a lap later, what the peer has not
	// consumed: [tail, head). An empty ring takes any frame that fits, even
	// after a skip to the next lap.
	if tail := s.txTail.Load(); tail != s.head && pos+need-tail > size {
		return 0, false
	}
	return pos, true
}

// put copies payload to position pos of tx (commitShm then moves head).
func (s *shmLink) put(pos uint64, payload []byte) {
	size := uint64(len(s.tx))
	copy(s.tx[pos%size:], payload)
}

// consume publishes that rx is consumed up to end and wakes the peer's
// sender if it sleeps on a full ring. The tail is stored before the flag is
// read, and the sender sets the flag before it rechecks the tail, so one of
// the two always sees the other (both are sequentially consistent).
func (s *shmLink) consume(end uint64) {
	s.rxTail.Store(end)
	if s.rxWaiting.Load() != 0 {
		s.rxWaiting.Store(0)
		s.rxWake.Add(1)
		futexWake(s.rxWake)
	}
}

// view returns the n bytes at position pos of rx after checking that the
// sender's claim lies in the ring and after what was consumed; end is the
// position to publish once they are used.
func (s *shmLink) view(pos uint64, n int) (p []byte, end uint64, err error) {
	size := uint64(len(s.rx))
	if pos%shmAlign != 0 || pos < s.rxTail.Load() || pos%size+uint64(n) > size {
		return nil, 0, fmt.Errorf("%w: shared-memory payload at %d (+%d) outside the ring", ErrBadFrame, pos, n)
	}
	return s.rx[pos%size : pos%size+uint64(n)], pos + alignUp(uint64(n)), nil
}

// CheckShmRing reports whether n bytes is a valid shared-memory ring size:
// 0 (links stay on TCP) or a multiple of 64 up to MaxShmRingBytes.
func CheckShmRing(n int) error {
	if n < 0 || n > MaxShmRingBytes || n%shmAlign != 0 {
		return fmt.Errorf("shared-memory ring of %d bytes: want 0 or a multiple of %d up to 1 GiB, e.g. 4MiB", n, shmAlign)
	}
	return nil
}
