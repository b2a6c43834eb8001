package collective

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// Sentinel errors. Every error returned by this package wraps one of these
// (or a context error), so callers test with errors.Is and never match text.
var (
	// ErrConfig: a Config or TCPConfig failed Validate.
	ErrConfig = errors.New("collective: invalid config")

	// ErrClosed: the Communicator or Transport was closed, either by Close or
	// because an earlier operation failed. A closed Communicator never
	// recovers; the caller builds a new one for the next plan generation.
	ErrClosed = errors.New("collective: closed")

	// ErrPeer: a peer went away (connection reset, EOF, closed in-memory
	// endpoint) in the middle of an operation.
	ErrPeer = errors.New("collective: peer lost")

	// ErrBadFrame: bytes on the wire are not a well-formed frame (magic,
	// version, checksum, kind, dtype or length out of range). The stream
	// cannot be resynchronised, so the connection is dropped.
	ErrBadFrame = errors.New("collective: malformed frame")

	// ErrMismatch: a well-formed frame of this generation from the right
	// peer does not belong to the operation in progress (different
	// operation, sequence number, dtype or length). The ranks called
	// collectives in different orders or with different sizes.
	ErrMismatch = errors.New("collective: ranks out of step")

	// ErrHandshake: a connection could not be established or was refused
	// (wrong generation, wrong rank, duplicate connection).
	ErrHandshake = errors.New("collective: handshake failed")

	// ErrBufferSize: the buffers passed to one operation disagree with the
	// operation's contract (for example Recv into a buffer of another size
	// than the sender's, or a dtype the operation does not take).
	ErrBufferSize = errors.New("collective: buffer size or dtype mismatch")
)

// wrapIO classifies an I/O error of a transport call on the link to peer.
// It keeps context errors recognisable (errors.Is(err, context.DeadlineExceeded))
// when the failure was caused by the caller's context, and maps EOF and
// connection resets to ErrPeer.
func wrapIO(ctx context.Context, op string, peer int, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("collective: %s rank %d: %w", op, peer, cerr)
	}
	var ne net.Error
	switch {
	case errors.Is(err, ErrBadFrame), errors.Is(err, ErrMismatch), errors.Is(err, ErrClosed),
		errors.Is(err, ErrPeer), errors.Is(err, ErrBufferSize):
		return fmt.Errorf("collective: %s rank %d: %w", op, peer, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, net.ErrClosed):
		return fmt.Errorf("collective: %s rank %d: %w: %v", op, peer, ErrPeer, err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("collective: %s rank %d: %w", op, peer, context.DeadlineExceeded)
	}
	return fmt.Errorf("collective: %s rank %d: %w: %v", op, peer, ErrPeer, err)
}
