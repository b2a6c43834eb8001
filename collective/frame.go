package collective

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/loomtrain/loom/tensor"
)

// Wire format. Every message on a link is one frame: a fixed 40-byte header
// followed by Len payload bytes (or, for a shared-memory data frame, by the
// payload's 8-byte ring position). All integers are little-endian.
//
//	offset size field
//	0      4    magic 0x4C4F4F4D
//	4      1    version (1)
//	5      1    kind (hello, welcome, data, shared-memory data)
//	6      1    op (which collective, or p2p)
//	7      1    wire dtype (tensor.DType: fp32, bf16, fp16)
//	8      8    generation
//	16     4    source rank
//	20     4    destination rank
//	24     8    sequence number of the operation
//	32     4    payload length in bytes
//	36     4    CRC-32C of bytes 0..35
//
// The header checksum lets a receiver tell a desynchronised or foreign stream
// from a frame; payloads are not checksummed (TCP already does, and a second
// pass over gigabytes of gradients would cost more than the link).
const (
	headerSize   = 40
	frameMagic   = 0x4C4F4F4D
	frameVersion = 1

	// DefaultMaxFrameBytes bounds one frame's payload. Operations split larger
	// buffers into chunks, so this only limits what a receiver will accept.
	DefaultMaxFrameBytes = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind is the type of a frame.
type Kind uint8

// Frame kinds. Hello and Welcome appear only during connection setup. A
// KindShmData frame is a data frame whose Len payload bytes wait in the
// link's shared memory; on the stream the header is followed by their 8-byte
// ring position instead (shm.go).
const (
	KindHello   Kind = 1
	KindWelcome Kind = 2
	KindData    Kind = 3
	KindShmData Kind = 4
)

// Op names the operation a data frame belongs to, so that ranks which call
// different collectives in the same slot fail with ErrMismatch instead of
// summing unrelated bytes.
type Op uint8

// Operations.
const (
	OpHandshake     Op = 1
	OpAllReduce     Op = 2
	OpReduceScatter Op = 3
	OpAllGather     Op = 4
	OpBroadcast     Op = 5
	OpBarrier       Op = 6
	OpP2P           Op = 7
	OpPipe          Op = 8 // a Pipe message (pipe.go)
)

var opNames = [...]string{"", "handshake", "allreduce", "reducescatter", "allgather", "broadcast", "barrier", "p2p", "pipe"}

func (o Op) String() string {
	if int(o) < len(opNames) && o != 0 {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Header is the decoded frame header.
type Header struct {
	Kind       Kind
	Op         Op
	DType      tensor.DType
	Generation uint64
	Src, Dst   uint32
	Seq        uint64
	Len        uint32
}

func (h Header) String() string {
	return fmt.Sprintf("%s gen=%d %d->%d seq=%d %s len=%d", h.Op, h.Generation, h.Src, h.Dst, h.Seq, h.DType, h.Len)
}

// EncodeHeader writes h into b[:headerSize]. b must have room for it.
func EncodeHeader(b []byte, h Header) {
	_ = b[headerSize-1]
	binary.LittleEndian.PutUint32(b[0:], frameMagic)
	b[4] = frameVersion
	b[5] = byte(h.Kind)
	b[6] = byte(h.Op)
	b[7] = byte(h.DType)
	binary.LittleEndian.PutUint64(b[8:], h.Generation)
	binary.LittleEndian.PutUint32(b[16:], h.Src)
	binary.LittleEndian.PutUint32(b[20:], h.Dst)
	binary.LittleEndian.PutUint64(b[24:], h.Seq)
	binary.LittleEndian.PutUint32(b[32:], h.Len)
	binary.LittleEndian.PutUint32(b[36:], crc32.Checksum(b[:36], castagnoli))
}

// DecodeHeader parses and validates a frame header. maxLen bounds the payload
// length it accepts. Every failure wraps ErrBadFrame. It never panics, for
// any input (see FuzzDecodeFrame).
func DecodeHeader(b []byte, maxLen int) (Header, error) {
	if len(b) < headerSize {
		return Header{}, fmt.Errorf("%w: short header (%d bytes)", ErrBadFrame, len(b))
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != frameMagic {
		return Header{}, fmt.Errorf("%w: bad magic %#x", ErrBadFrame, m)
	}
	if b[4] != frameVersion {
		return Header{}, fmt.Errorf("%w: unsupported version %d", ErrBadFrame, b[4])
	}
	if got, want := binary.LittleEndian.Uint32(b[36:]), crc32.Checksum(b[:36], castagnoli); got != want {
		return Header{}, fmt.Errorf("%w: header checksum %#x, want %#x", ErrBadFrame, got, want)
	}
	h := Header{
		Kind:       Kind(b[5]),
		Op:         Op(b[6]),
		DType:      tensor.DType(b[7]),
		Generation: binary.LittleEndian.Uint64(b[8:]),
		Src:        binary.LittleEndian.Uint32(b[16:]),
		Dst:        binary.LittleEndian.Uint32(b[20:]),
		Seq:        binary.LittleEndian.Uint64(b[24:]),
		Len:        binary.LittleEndian.Uint32(b[32:]),
	}
	if h.Kind < KindHello || h.Kind > KindShmData {
		return Header{}, fmt.Errorf("%w: unknown kind %d", ErrBadFrame, h.Kind)
	}
	if h.Op < OpHandshake || h.Op > OpPipe {
		return Header{}, fmt.Errorf("%w: unknown op %d", ErrBadFrame, h.Op)
	}
	if !h.DType.Valid() {
		return Header{}, fmt.Errorf("%w: unknown dtype %d", ErrBadFrame, h.DType)
	}
	if int64(h.Len) > int64(maxLen) {
		return Header{}, fmt.Errorf("%w: payload %d bytes exceeds limit %d", ErrBadFrame, h.Len, maxLen)
	}
	if h.Len%uint32(h.DType.Size()) != 0 {
		return Header{}, fmt.Errorf("%w: payload %d bytes is not a whole number of %s", ErrBadFrame, h.Len, h.DType)
	}
	if (h.Kind == KindHello || h.Kind == KindWelcome) && h.Len != 0 {
		return Header{}, fmt.Errorf("%w: %d-byte payload on a handshake frame", ErrBadFrame, h.Len)
	}
	return h, nil
}

// readHeader reads and decodes one header from r into scratch (headerSize bytes).
func readHeader(r io.Reader, scratch []byte, maxLen int) (Header, error) {
	if _, err := io.ReadFull(r, scratch[:headerSize]); err != nil {
		return Header{}, err
	}
	return DecodeHeader(scratch[:headerSize], maxLen)
}

// verdict is what a receiver does with a decoded frame.
type verdict int

const (
	accept        verdict = iota
	rejectGen             // another generation: count, discard, keep reading
	rejectRank            // wrong source or destination rank: count, discard, keep reading
	fatalMismatch         // right peer and generation, wrong operation: fail
)

// judge compares a received header with the one the receiver expects: want
// carries Kind, Op, DType, Seq, Generation, Src (the peer read from), Dst (me)
// and Len (the receive buffer's size).
func judge(got, want Header) (verdict, error) {
	switch {
	case got.Generation != want.Generation:
		return rejectGen, fmt.Errorf("frame of generation %d, want %d", got.Generation, want.Generation)
	case got.Src != want.Src || got.Dst != want.Dst:
		return rejectRank, fmt.Errorf("frame %d->%d on the link %d->%d", got.Src, got.Dst, want.Src, want.Dst)
	case got.Kind != want.Kind || got.Op != want.Op || got.Seq != want.Seq || got.DType != want.DType:
		return fatalMismatch, fmt.Errorf("%w: got %v, want %v", ErrMismatch, got, want)
	case got.Len != want.Len:
		return fatalMismatch, fmt.Errorf("%w: got %d payload bytes, want %d (%v)", ErrMismatch, got.Len, want.Len, want)
	}
	return accept, nil
}
