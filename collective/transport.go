package collective

import (
	"context"
	"sync/atomic"
	"unsafe"
)

// Transport moves frames between the ranks of one group of one generation.
// The Communicator is its only consumer and needs nothing more than this.
//
// Implementations: TCPTransport (real sockets) and MemTransport (channels,
// for tests and for ranks sharing a process). Both are run by the same test
// suite.
//
// Concurrency: Send to a given peer may be called by one goroutine at a time,
// and Recv from a given peer by one goroutine at a time; calls for different
// peers or directions run concurrently. Close may be called at any time from
// any goroutine and unblocks every pending call, which then fails.
type Transport interface {
	// Rank is this endpoint's rank, in [0, Size()).
	Rank() int
	// Size is the number of ranks in the group.
	Size() int
	// Generation is the plan generation the group was built for.
	Generation() uint64

	// Send writes one frame to rank to. The transport stamps Generation, Src,
	// Dst and Len (= len(payload)); the caller sets Kind, Op, DType and Seq.
	// payload is not retained after Send returns. Blocks until the frame is
	// handed to the link (or ctx ends).
	Send(ctx context.Context, to int, h Header, payload []byte) error

	// Recv reads the next frame from rank from into payload. want carries the
	// Kind, Op, DType and Seq the caller expects; the frame must be of this
	// generation, from rank from to this rank, and exactly len(payload) bytes
	// long. Frames of another generation or naming wrong ranks are discarded
	// and counted in Stats; a frame of the wrong operation, sequence or size
	// fails with ErrMismatch.
	Recv(ctx context.Context, from int, want Header, payload []byte) error

	// Stats returns counters since the transport was created.
	Stats() Stats

	// Close tears down every link. Idempotent.
	Close() error
}

// lender is implemented by transports that can show a received payload where
// it already lies (TCPTransport on a shared-memory link) to a caller that
// reads it once, as a reduction does, instead of copying it into the
// caller's buffer first. RecvLend is Recv except that the payload may be
// returned in transport memory (or else is read into scratch, whose length
// is the payload size expected); after a nil error the caller must call
// Release(from) once done with it, and must not receive on that link before.
type lender interface {
	RecvLend(ctx context.Context, from int, want Header, scratch []byte) ([]byte, error)
	Release(from int)
}

// directSender is implemented by transports that let a sender write a
// frame's payload straight into link memory (TCPTransport on a
// shared-memory link): Reserve returns n bytes for the next frame to rank
// to, or nil and no error when that frame must go through Send; after a
// non-nil slice the caller ends with Commit (send the frame, header h) or
// Cancel (send nothing) before using the link's send side again.
type directSender interface {
	SharedMemoryTo(peer int) bool // whether Reserve can ever succeed on that link
	Reserve(ctx context.Context, to, n int) ([]byte, error)
	Commit(ctx context.Context, to int, h Header) error
	Cancel(to int)
}

// Stats counts a transport's traffic and the frames it refused.
type Stats struct {
	FramesSent, FramesReceived uint64
	BytesSent, BytesReceived   uint64 // payload bytes
	// RejectedGeneration counts frames and connection attempts from another
	// plan generation (a rank still running the previous plan, say).
	RejectedGeneration uint64
	// RejectedRank counts frames naming a source or destination that does not
	// match the link they arrived on, and connections from unexpected ranks.
	RejectedRank uint64
	// RejectedTLS counts connections whose TLS handshake failed: a peer
	// without an admitted certificate, or one that refused ours.
	RejectedTLS uint64
	// FramesSentShm counts the sent frames whose payload went through shared
	// memory (the rest of FramesSent went through the socket).
	FramesSentShm uint64
}

// counters is the atomic backing of Stats, shared by both transports.
type counters struct {
	framesSent, framesReceived atomic.Uint64
	bytesSent, bytesReceived   atomic.Uint64
	rejectedGen, rejectedRank  atomic.Uint64
	rejectedTLS                atomic.Uint64
	framesSentShm              atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		FramesSent:         c.framesSent.Load(),
		FramesReceived:     c.framesReceived.Load(),
		BytesSent:          c.bytesSent.Load(),
		BytesReceived:      c.bytesReceived.Load(),
		RejectedGeneration: c.rejectedGen.Load(),
		RejectedRank:       c.rejectedRank.Load(),
		RejectedTLS:        c.rejectedTLS.Load(),
		FramesSentShm:      c.framesSentShm.Load(),
	}
}

func (c *counters) sent(n int) {
	c.framesSent.Add(1)
	c.bytesSent.Add(uint64(n))
}

func (c *counters) received(n int) {
	c.framesReceived.Add(1)
	c.bytesReceived.Add(uint64(n))
}

// reject counts a refused frame by its verdict.
func (c *counters) reject(v verdict) {
	switch v {
	case rejectGen:
		c.rejectedGen.Add(1)
	case rejectRank:
		c.rejectedRank.Add(1)
	}
}

// f32Bytes views a float32 slice as its little-endian bytes without copying.
// The wire format is little-endian; littleEndian guards the hosts this is
// valid on (New refuses to run elsewhere).
func f32Bytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), len(f)*4)
}

// u16Bytes views a uint16 slice as its little-endian bytes without copying.
func u16Bytes(u []uint16) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(u))), len(u)*2)
}

// littleEndian reports whether this host stores integers little-endian.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()
