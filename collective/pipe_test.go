package collective

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// newTestPipes returns one pipe per rank over n transports of kind.
func newTestPipes(t *testing.T, kind TransportKind, n int, cfg PipeConfig) ([]Transport, []*Pipe) {
	t.Helper()
	ts := NewTestTransports(t, kind, 7, n)
	ps := make([]*Pipe, n)
	for r := range n {
		ps[r] = NewPipe(ts[r], cfg)
	}
	t.Cleanup(func() {
		for _, p := range ps {
			_ = p.Close()
		}
	})
	return ts, ps
}

// Both neighbours send several 8 MiB messages before receiving any (the
// 1F1B pattern that deadlocks with blocking sends), then alternate one send
// and one receive; every message arrives whole and in order, on every
// transport (shm: through shared memory).
func TestPipeBidirectionalLarge(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const size, burst, steady = 2 << 20, 3, 3 // 8 MiB of float32
		ts, ps := newTestPipes(t, kind, 2, PipeConfig{})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		mustAll(t, RunRanks(2, func(r int) error {
			p, peer := ps[r], 1-r
			out, in := make([]float32, size), make([]float32, size)
			for m := range burst {
				fill(out, r, m)
				if err := p.Send(peer, out); err != nil {
					return err
				}
			}
			for m := range burst {
				if err := p.Recv(ctx, peer, in); err != nil {
					return err
				}
				if err := check(in, peer, m, 0); err != nil {
					return fmt.Errorf("rank %d message %d: %w", r, m, err)
				}
			}
			for m := burst; m < burst+steady; m++ {
				fill(out, r, m)
				if err := p.Send(peer, out); err != nil {
					return err
				}
				if err := p.Recv(ctx, peer, in); err != nil {
					return err
				}
				if err := check(in, peer, m, 0); err != nil {
					return fmt.Errorf("rank %d message %d: %w", r, m, err)
				}
			}
			return p.Flush(ctx)
		}))
		st := ts[0].Stats()
		if want := uint64((burst + steady) * size * 4); st.BytesSent != want || st.BytesReceived != want {
			t.Fatalf("stats %+v, want %d bytes each way", st, want)
		}
		if kind == TransportShm && st.FramesSentShm != st.FramesSent {
			t.Fatalf("shm: %d of %d frames through shared memory", st.FramesSentShm, st.FramesSent)
		}
	})
}

// Messages of every length around the chunk size, empty ones included,
// arrive exactly, interleaved with messages the other way.
func TestPipeMessageSizes(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		_, ps := newTestPipes(t, kind, 3, PipeConfig{ChunkBytes: 256})
		sizes := []int{0, 1, 63, 64, 65, 0, 128, 1000, 4099}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		mustAll(t, RunRanks(3, func(r int) error {
			if r == 1 { // rank 1 only listens to 0 and 2, from two goroutines
				errs := RunRanks(2, func(i int) error {
					from := 2 * i
					for m, n := range sizes {
						buf := make([]float32, n)
						if err := ps[1].Recv(ctx, from, buf); err != nil {
							return err
						}
						if err := check(buf, from, m, 0); err != nil {
							return fmt.Errorf("from %d message %d (%d elements): %w", from, m, n, err)
						}
					}
					return nil
				})
				return errors.Join(errs...)
			}
			for m, n := range sizes {
				buf := make([]float32, n)
				fill(buf, r, m)
				if err := ps[r].Send(1, buf); err != nil {
					return err
				}
				fill(buf, -1, 0) // Send copied: reusing the buffer is safe
			}
			return ps[r].Flush(ctx)
		}))
	})
}

// Flush waits for the transport to take the queued messages, gives up at
// its context without failing the pipe, and completes once the peer reads.
func TestPipeFlush(t *testing.T) {
	defer goleak.VerifyNone(t)
	t.Run("mem", func(t *testing.T) { // cleanups run before the leak check
		_, ps := newTestPipes(t, TransportMem, 2, PipeConfig{ChunkBytes: 64})
		const msgs = 4 * memQueueDepth // more frames than the in-memory link holds
		for m := range msgs {
			if err := ps[0].Send(1, []float32{float32(m)}); err != nil {
				t.Fatal(err)
			}
		}
		short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := ps[0].Flush(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Flush with nobody receiving: %v, want DeadlineExceeded", err)
		}
		if err := ps[0].Err(); err != nil {
			t.Fatalf("a Flush that timed out failed the pipe: %v", err)
		}
		ctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel2()
		flushed := make(chan error, 1)
		go func() { flushed <- ps[0].Flush(ctx) }()
		got := []float32{0}
		for m := range msgs {
			if err := ps[1].Recv(ctx, 0, got); err != nil || got[0] != float32(m) {
				t.Fatalf("message %d: %v %v", m, got, err)
			}
		}
		if err := <-flushed; err != nil {
			t.Fatal(err)
		}
	})
}

// Misuse errors clearly and leaves the pipe usable; a closed pipe refuses
// everything with ErrClosed; Close is idempotent.
func TestPipeErrorsAndClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	t.Run("mem", func(t *testing.T) { // cleanups run before the leak check
		ts, ps := newTestPipes(t, TransportMem, 2, PipeConfig{})
		if got := ps[0].ChunkBytes(); got != DefaultPipeChunkBytes {
			t.Fatalf("default chunk %d, want %d", got, DefaultPipeChunkBytes)
		}
		for _, c := range []struct{ ask, want int }{{1 << 30, DefaultMaxFrameBytes}, {7, 4}, {1, 4}, {1001, 1000}} {
			if got := NewPipe(ts[0], PipeConfig{ChunkBytes: c.ask}).ChunkBytes(); got != c.want { // never used: no goroutine, nothing to close
				t.Errorf("ChunkBytes %d became %d, want %d", c.ask, got, c.want)
			}
		}
		for _, peer := range []int{-1, 0, 2} {
			if err := ps[0].Send(peer, nil); !errors.Is(err, ErrConfig) {
				t.Errorf("Send to %d: %v, want ErrConfig", peer, err)
			}
			if err := ps[0].Recv(context.Background(), peer, nil); !errors.Is(err, ErrConfig) {
				t.Errorf("Recv from %d: %v, want ErrConfig", peer, err)
			}
		}
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		if err := ps[0].Recv(cancelled, 1, nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv with a cancelled context: %v", err)
		}
		if err := ps[0].Err(); err != nil {
			t.Fatalf("misuse failed the pipe: %v", err)
		}
		// Still usable: one message each way.
		ctx, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel2()
		mustAll(t, RunRanks(2, func(r int) error {
			if err := ps[r].Send(1-r, []float32{float32(r)}); err != nil {
				return err
			}
			got := []float32{-1}
			if err := ps[r].Recv(ctx, 1-r, got); err != nil {
				return err
			}
			if got[0] != float32(1-r) {
				return fmt.Errorf("rank %d got %v", r, got)
			}
			return nil
		}))
		if err := ps[0].Close(); err != nil {
			t.Fatal(err)
		}
		_ = ps[0].Close()
		for name, err := range map[string]error{
			"Err":   ps[0].Err(),
			"Send":  ps[0].Send(1, []float32{1}),
			"Recv":  ps[0].Recv(ctx, 1, []float32{1}),
			"Flush": ps[0].Flush(ctx),
		} {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		}
	})
}

// A peer that goes away (its transport closes, as when its process exits)
// while a Recv from it is pending makes that Recv fail at once, with a
// peer error rather than at its deadline, and fails the pipe.
func TestPipePeerGoneFailsRecv(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		ts, ps := newTestPipes(t, kind, 2, PipeConfig{})
		const deadline = 10 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		type result struct {
			err error
			at  time.Time
		}
		res := make(chan result, 1)
		go func() {
			if err := ps[0].Send(1, []float32{1}); err != nil { // "about to receive"
				res <- result{err, time.Now()}
				return
			}
			err := ps[0].Recv(ctx, 1, make([]float32, 1000))
			res <- result{err, time.Now()}
		}()
		if err := ps[1].Recv(ctx, 0, []float32{0}); err != nil {
			t.Fatal(err)
		}
		closedAt := time.Now()
		_ = ts[1].Close()
		got := <-res
		if got.err == nil || errors.Is(got.err, context.DeadlineExceeded) {
			t.Fatalf("pending Recv: %v, want a peer error before the deadline", got.err)
		}
		if !errors.Is(got.err, ErrPeer) {
			t.Fatalf("pending Recv: %v, want ErrPeer", got.err)
		}
		if d := got.at.Sub(closedAt); d > 2*time.Second {
			t.Fatalf("pending Recv took %v to notice the lost peer", d)
		}
		if err := ps[0].Send(1, []float32{1}); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrPeer) {
			t.Fatalf("Send after the failure: %v, want ErrClosed wrapping the ErrPeer cause", err)
		}
	})
}

// A peer that is alive but never sends makes a Recv fail at its context's
// deadline, and fails the pipe (the link may be mid-frame).
func TestPipeRecvDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		_, ps := newTestPipes(t, kind, 2, PipeConfig{})
		const deadline = 200 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		err := ps[0].Recv(ctx, 1, make([]float32, 10))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv from a silent peer: %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > deadline+2*time.Second {
			t.Fatalf("Recv returned after %v", d)
		}
		if err := ps[0].Err(); !errors.Is(err, ErrClosed) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("pipe after the deadline: %v", err)
		}
	})
}

// A stage ring that fails (here: one rank closes its Communicator, as a
// dying worker does) fails the whole generation: the other stage ring's and
// both pipes' pending calls all return errors promptly, through the closed
// world transports.
func TestSubFailureFailsGeneration(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n, victim = 4, 2
		w := newStageWorld(t, kind, 0)
		const deadline = 10 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		var closedAt time.Time
		failedAt := make([]time.Time, n)
		errs := RunRanks(n, func(r int) error {
			var err error
			switch r {
			case victim:
				buf := make([]float32, 1000)
				for range 3 {
					if err := w.comms[r].AllReduce(ctx, F32(buf)); err != nil {
						return err
					}
				}
				closedAt = time.Now()
				return w.comms[r].Close()
			case 3: // the victim's stage partner: all-reduces until the ring fails
				buf := make([]float32, 1000)
				for err == nil {
					err = w.comms[r].AllReduce(ctx, F32(buf))
				}
			default: // ranks 0 and 1 wait on the pipe from the other stage
				err = w.pipes[r].Recv(ctx, r^2, make([]float32, 10))
			}
			failedAt[r] = time.Now()
			return err
		})
		for r, err := range errs {
			if r == victim {
				if err != nil {
					t.Fatalf("victim: %v", err)
				}
				continue
			}
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("rank %d: %v, want an error before the deadline", r, err)
			}
			if d := failedAt[r].Sub(closedAt); d > 2*time.Second {
				t.Fatalf("rank %d took %v to fail", r, d)
			}
		}
	})
}

// A Recv into a buffer of another length than the message fails with
// ErrMismatch on the receiver, whether the lengths differ in the last frame,
// in the number of frames, or between empty and not, and fails the pipe.
func TestPipeLengthMismatch(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for _, c := range []struct{ send, recv int }{{10, 12}, {12, 10}, {48, 32}, {32, 48}, {0, 1}, {1, 0}} {
			t.Run(fmt.Sprintf("%d-to-%d", c.send, c.recv), func(t *testing.T) {
				_, ps := newTestPipes(t, kind, 2, PipeConfig{ChunkBytes: 64}) // 16 elements a frame
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := ps[0].Send(1, make([]float32, c.send)); err != nil {
					t.Fatal(err)
				}
				err := ps[1].Recv(ctx, 0, make([]float32, c.recv))
				if !errors.Is(err, ErrMismatch) {
					t.Fatalf("receiver: %v, want ErrMismatch", err)
				}
				if perr := ps[1].Err(); !errors.Is(perr, ErrClosed) || !errors.Is(perr, ErrMismatch) {
					t.Fatalf("pipe after the mismatch: %v", perr)
				}
			})
		}
	})
}
