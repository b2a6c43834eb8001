//go:build linux

package collective

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Shared-memory links exist on Linux only (this file's build tag): here the
// kill test also runs with payloads through shared memory.
func init() { killModes = append(killModes, true) }

// The ring arithmetic on one region, both ends in this process: payloads
// are placed on 64-byte boundaries, never wrap, and a full ring says so
// instead of overwriting what the receiver has not consumed.
func TestShmRingReserveWrapAndFull(t *testing.T) {
	reg, name, err := createShm(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.unmap()
	removeShm(name)
	tx, rx := newShmLink(reg, true), newShmLink(reg, false)
	send := func(n int) (uint64, bool) {
		pos, ok := tx.reserve(n)
		if ok {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(int(pos) + i)
			}
			tx.put(pos, p)
			tx.head = pos + alignUp(uint64(n)) // as commitShm does
		}
		return pos, ok
	}
	recv := func(pos uint64, n int) {
		t.Helper()
		v, end, err := rx.view(pos, n)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range v {
			if b != byte(int(pos)+i) {
				t.Fatalf("payload at %d: byte %d is %d", pos, i, b)
			}
		}
		rx.rxTail.Store(end)
	}
	steps := []struct {
		n       int
		wantPos uint64
		wantOK  bool
	}{
		{400, 0, true},   // [0, 448)
		{300, 448, true}, // [448, 768)
		{300, 0, false},  // 768+320 > 1024 would wrap; the next lap's [1024, 1344) overlaps unread [0, 448)
		{0, 0, false},    // empty payloads travel inline
		{2000, 0, false}, // larger than the ring
	}
	for i, s := range steps {
		pos, ok := send(s.n)
		if ok != s.wantOK || (ok && pos != s.wantPos) {
			t.Fatalf("step %d: reserve(%d) = %d, %v; want %d, %v", i, s.n, pos, ok, s.wantPos, s.wantOK)
		}
	}
	recv(0, 400)
	if pos, ok := send(300); !ok || pos != 1024 { // next lap, in the freed start
		t.Fatalf("after consuming: reserve = %d, %v; want 1024, true", pos, ok)
	}
	recv(448, 300)
	recv(1024, 300)
	// Empty again, head at 1344 (320 into the lap): a 900-byte payload does
	// not fit before the lap's end, but the skip leaves nothing to overlap.
	if pos, ok := send(900); !ok || pos != 2048 {
		t.Fatalf("empty ring: reserve(900) = %d, %v; want 2048, true", pos, ok)
	}
	if _, ok := tx.reserve(64); ok {
		t.Fatal("reserved room in a ring holding 960 of 1024 bytes unread, after a skip")
	}
	recv(2048, 900)
	if _, _, err := rx.view(0, 64); err == nil {
		t.Fatal("a position already consumed was accepted")
	}
	if _, _, err := rx.view(3072+960, 128); err == nil {
		t.Fatal("a payload running past the ring's end was accepted")
	}
	if _, _, err := rx.view(3072+8, 8); err == nil {
		t.Fatal("an unaligned position was accepted")
	}
}

func TestShmOfferValidation(t *testing.T) {
	for _, name := range []string{"", "loom-", "../etc/passwd", "loom-../../x", "loom-12/34", "other-12-ab", "loom-ABC"} {
		if validShmName(name) {
			t.Errorf("name %q accepted", name)
		}
	}
	if !validShmName("loom-1234-00ff") {
		t.Error("a name createShm makes was refused")
	}
	for _, b := range [][]byte{nil, make([]byte, 23), make([]byte, 24+200)} {
		if _, _, _, err := decodeShmOffer(b); err == nil {
			t.Errorf("offer of %d bytes accepted", len(b))
		}
	}
	bad := make([]byte, 28)
	binary.LittleEndian.PutUint64(bad[16:], 100) // not a multiple of 64
	if _, _, _, err := decodeShmOffer(bad); err == nil {
		t.Error("ring of 100 bytes accepted")
	}
	if _, err := openShm("loom-1-00", make([]byte, 16), 4096); err == nil {
		t.Error("opened a region nobody offered")
	}
}

// A tiny ring (a 256-byte chunk and a bit) makes every all-reduce wrap it,
// skip to the next lap and fill it, so senders sleep until the receiver
// frees space; sums stay exact, for every size and 2-5 ranks. A payload
// larger than the whole ring travels inline on the same link.
func TestShmTinyRingAllReduceExact(t *testing.T) {
	for n := 2; n <= 5; n++ {
		ts, err := NewLoopbackTCP(context.Background(), 7, n, func(c *TCPConfig) { c.ShmRingBytes = 384 })
		if err != nil {
			t.Fatal(err)
		}
		cs := make([]*Communicator, n)
		for r, tr := range ts {
			if got := tr.SharedMemoryLinks(); got != n-1 {
				t.Fatalf("rank %d: %d shared-memory links, want %d", r, got, n-1)
			}
			cfg := testConfig(n, shuffledOrder(n))
			cfg.Rank = r
			if cs[r], err = New(tr, cfg); err != nil {
				t.Fatal(err)
			}
		}
		for _, size := range sizesFor(n) {
			bufs := make([][]float32, n)
			for r := range n {
				bufs[r] = make([]float32, size)
				for i := range bufs[r] {
					bufs[r][i] = intInput(r, i)
				}
			}
			mustAll(t, RunRanks(n, func(r int) error { return cs[r].AllReduce(context.Background(), F32(bufs[r])) }))
			for r := range n {
				for i, v := range bufs[r] {
					var want float32
					for q := range n {
						want += intInput(q, i)
					}
					if v != want {
						t.Fatalf("n=%d size=%d rank %d [%d] = %v, want %v", n, size, r, i, v, want)
					}
				}
			}
		}
		var shm, all uint64
		for _, c := range cs {
			st := c.Stats()
			shm, all = shm+st.FramesSentShm, all+st.FramesSent
		}
		t.Logf("%d ranks: %d of %d frames through shared memory (the rest are empty)", n, shm, all)
		if shm == 0 {
			t.Fatalf("%d ranks: no frame went through shared memory", n)
		}
		big, got := make([]byte, 1000), make([]byte, 1000)
		for i := range big {
			big[i] = byte(i)
		}
		h := Header{Kind: KindData, Op: OpP2P, DType: 1, Seq: 1}
		before := ts[1].Stats()
		errc := make(chan error, 1)
		go func() { errc <- ts[1].Send(context.Background(), 0, h, big) }()
		if err := ts[0].Recv(context.Background(), 1, h, got); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		after := ts[1].Stats()
		if string(got) != string(big) || after.FramesSent != before.FramesSent+1 || after.FramesSentShm != before.FramesSentShm {
			t.Fatalf("%d ranks: a payload larger than the ring: intact %v, stats before %+v after %+v", n, string(got) == string(big), before, after)
		}
		for _, c := range cs {
			_ = c.Close()
		}
	}
}

// One end without shared memory: the link falls back to the socket, and the
// offered file is gone either way.
func TestShmRefusedFallsBackToSocket(t *testing.T) {
	ts, err := NewLoopbackTCP(context.Background(), 7, 3, func(c *TCPConfig) {
		if c.Rank == 0 { // the acceptor of both its links: refuses the offers
			c.ShmRingBytes = 0
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int{0, 1, 1} // ranks 1 and 2 share memory with each other only
	for r, tr := range ts {
		if got := tr.SharedMemoryLinks(); got != want[r] {
			t.Errorf("rank %d: %d shared-memory links, want %d", r, got, want[r])
		}
	}
	cs := make([]*Communicator, 3)
	for r, tr := range ts {
		cfg := testConfig(3, nil)
		cfg.Rank = r
		if cs[r], err = New(tr, cfg); err != nil {
			t.Fatal(err)
		}
		defer cs[r].Close()
	}
	bufs := [][]float32{{1, 2}, {10, 20}, {100, 200}}
	mustAll(t, RunRanks(3, func(r int) error { return cs[r].AllReduce(context.Background(), F32(bufs[r])) }))
	if bufs[0][1] != 222 || bufs[2][0] != 111 {
		t.Fatalf("sums wrong: %v", bufs)
	}
	if left, _ := filepath.Glob(filepath.Join(shmDir, fmt.Sprintf("%s%d-*", shmPrefix, os.Getpid()))); len(left) > 0 {
		t.Fatalf("left in %s: %v", shmDir, left)
	}
}

// Stray frames that arrive through shared memory are discarded and counted
// like socket ones, and their ring space is freed.
func TestShmForeignFramesRejected(t *testing.T) {
	ts := NewTestTransports(t, TransportShm, 7, 2)
	src := ts[1].(*TCPTransport)
	l := src.links[0]
	for _, h := range []Header{
		{Kind: KindShmData, Op: OpAllReduce, DType: 1, Generation: 6, Src: 1, Dst: 0, Seq: 1, Len: 8},
		{Kind: KindShmData, Op: OpAllReduce, DType: 1, Generation: 7, Src: 5, Dst: 0, Seq: 1, Len: 8},
	} {
		pos, ok := l.shm.reserve(8)
		if !ok {
			t.Fatal("ring full")
		}
		l.shm.put(pos, make([]byte, 8))
		l.shm.head = pos + shmAlign
		EncodeHeader(l.shdr[:], h)
		binary.LittleEndian.PutUint64(l.shdr[headerSize:], pos)
		if _, err := l.conn.Write(l.shdr[:]); err != nil {
			t.Fatal(err)
		}
	}
	want := Header{Kind: KindData, Op: OpP2P, DType: 1, Seq: 1}
	errc := make(chan error, 1)
	go func() { errc <- src.Send(context.Background(), 0, want, f32Bytes([]float32{3, 4})) }()
	got := make([]float32, 2)
	if err := ts[0].Recv(context.Background(), 1, want, f32Bytes(got)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got[0] != 3 || got[1] != 4 {
		t.Fatalf("got %v", got)
	}
	st := ts[0].Stats()
	if st.RejectedGeneration != 1 || st.RejectedRank != 1 {
		t.Fatalf("stats %+v, want one generation and one rank rejection", st)
	}
	if tail := ts[0].(*TCPTransport).links[1].shm.rxTail.Load(); tail != 3*shmAlign {
		t.Fatalf("receiver consumed %d bytes of the ring, want %d", tail, 3*shmAlign)
	}
}
