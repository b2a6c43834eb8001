//go:build linux

package collective

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// createShm makes a region with two rings of ring bytes each in a new file
// under shmDir, reserves its memory (so that running out of /dev/shm fails
// here, not with SIGBUS on a later write), maps it and stamps its control
// page. It returns the file's name, which the caller unlinks once the peer
// has answered.
func createShm(ring int) (*shmRegion, string, error) {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, "", err
	}
	name := fmt.Sprintf("%s%d-%s", shmPrefix, os.Getpid(), hex.EncodeToString(id[:]))
	path := filepath.Join(shmDir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	size := shmSize(ring)
	fail := func(err error) (*shmRegion, string, error) {
		_ = os.Remove(path)
		return nil, "", err
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, int64(size)); err != nil {
		return fail(fmt.Errorf("reserve %d bytes in %s: %w", size, shmDir, err))
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	r := &shmRegion{mem: mem, ring: ring}
	if _, err := rand.Read(r.nonce()); err != nil {
		r.unmap()
		return fail(err)
	}
	r.stamp()
	return r, name, nil
}

// openShm maps the region a peer offered under name, checks that it is the
// one offered (size, magic, nonce: a file of that name on another host, or
// a stale one, is refused) and unlinks it: from now on only the two
// mappings keep it alive, so nothing is left behind when either process dies.
func openShm(name string, nonce []byte, ring int) (*shmRegion, error) {
	if !validShmName(name) {
		return nil, fmt.Errorf("%w: shared-memory name %q", ErrBadFrame, name)
	}
	path := filepath.Join(shmDir, name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := shmSize(ring)
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if st.Size() != int64(size) {
		return nil, fmt.Errorf("%s is %d bytes, want %d", path, st.Size(), size)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	r := &shmRegion{mem: mem, ring: ring}
	if err := r.check(nonce); err != nil {
		r.unmap()
		return nil, err
	}
	_ = os.Remove(path)
	return r, nil
}

// removeShm unlinks a region's file; a file already gone is not an error.
func removeShm(name string) {
	if validShmName(name) {
		_ = os.Remove(filepath.Join(shmDir, name))
	}
}

func (r *shmRegion) unmap() {
	if r.mem != nil {
		_ = syscall.Munmap(r.mem)
		r.mem = nil
	}
}

// futexWait sleeps while *w == val, for at most d (or until futexWake).
// Spurious returns are fine: callers recheck their condition.
func futexWait(w *atomic.Uint32, val uint32, d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_, _, _ = syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWaitOp, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWake wakes the sleepers on w, in any process mapping it.
func futexWake(w *atomic.Uint32) {
	_, _, _ = syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWakeOp, math.MaxInt32, 0, 0, 0)
}

// Shared (not FUTEX_PRIVATE) operations: the word lives in a MAP_SHARED
// file mapping, and the kernel keys it by file and offset, so a wake in one
// process reaches a sleeper in another.
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

// peerGone peeks at a connection without consuming or blocking and reports
// whether the peer has closed it (EOF) or it has failed. It uses the raw
// descriptor outside the runtime's read lock, which a receiver blocked on
// the same connection holds.
func peerGone(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	if err := rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = (err == nil && n == 0) || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR)
	}); err != nil {
		return true
	}
	return gone
}
