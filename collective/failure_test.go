package collective

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func isErr(err, target error) bool { return errors.Is(err, target) }

// A rank that dies mid-operation (its transport closes, as when the process
// exits) makes every other rank's call fail promptly, long before the deadline.
func TestDeadPeerFailsAllRanksPromptly(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n, victim = 5, 2
		cs := NewTestGroup(t, kind, n, testConfig(n, shuffledOrder(n)))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var closedAt time.Time
		failedAt := make([]time.Time, n)
		errs := RunRanks(n, func(r int) error {
			buf := make([]float32, 1<<14)
			for i := 0; ; i++ {
				if r == victim && i == 3 {
					closedAt = time.Now()
					return cs[r].Close()
				}
				if err := cs[r].AllReduce(ctx, F32(buf)); err != nil {
					failedAt[r] = time.Now()
					return err
				}
			}
		})
		for r, err := range errs {
			if r == victim {
				continue
			}
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("rank %d: %v, want a peer error before the deadline", r, err)
			}
			if d := failedAt[r].Sub(closedAt); d > 2*time.Second {
				t.Fatalf("rank %d took %v to notice the dead peer", r, d)
			}
		}
	})
}

// A stalled peer (alive, never calls) makes every rank fail at its deadline.
func TestStalledPeerHitsDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n, stalled = 4, 3
		cs := NewTestGroup(t, kind, n, testConfig(n, nil))
		const deadline = 300 * time.Millisecond
		errs := RunRanks(n, func(r int) error {
			if r == stalled {
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			err := cs[r].AllReduce(ctx, F32(make([]float32, 10000)))
			if d := time.Since(start); d > deadline+time.Second {
				t.Errorf("rank %d returned after %v", r, d)
			}
			return err
		})
		for r, err := range errs {
			if r != stalled && err == nil {
				t.Fatalf("rank %d: no error", r)
			}
		}
		if !errors.Is(errs[0], context.DeadlineExceeded) && !errors.Is(errs[0], ErrPeer) {
			t.Fatalf("rank 0: %v", errs[0])
		}
	})
}

// Cancelling the context unblocks a pending call.
func TestCancelUnblocks(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		cs := NewTestGroup(t, kind, 2, testConfig(2, nil))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		err := cs[0].Recv(ctx, 1, F32(make([]float32, 10)))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

// Frames of another generation, or naming the wrong ranks, are discarded and
// counted; the operation still completes.
func TestForeignFramesRejectedAndCounted(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n = 2
		ts := NewTestTransports(t, kind, 7, n)
		stale := Header{Kind: KindData, Op: OpAllReduce, DType: 1, Generation: 6, Src: 1, Dst: 0, Seq: 1, Len: 8}
		wrong := stale
		wrong.Generation, wrong.Src = 7, 5
		for _, h := range []Header{stale, wrong} {
			switch tt := ts[1].(type) {
			case *MemTransport:
				tt.g.Inject(1, 0, h, make([]byte, 8))
			case *TCPTransport:
				if err := tt.sendRaw(0, h, make([]byte, 8)); err != nil {
					t.Fatal(err)
				}
			}
		}
		cs := make([]*Communicator, n)
		for r := range n {
			cfg := testConfig(n, nil)
			cfg.Rank = r
			var err error
			if cs[r], err = New(ts[r], cfg); err != nil {
				t.Fatal(err)
			}
			defer cs[r].Close()
		}
		bufs := [][]float32{{1, 2, 3}, {10, 20, 30}}
		mustAll(t, RunRanks(n, func(r int) error {
			return cs[r].AllReduce(context.Background(), F32(bufs[r]))
		}))
		if bufs[0][2] != 33 || bufs[1][0] != 11 {
			t.Fatalf("sums wrong: %v", bufs)
		}
		st := cs[0].Stats()
		if st.RejectedGeneration != 1 || st.RejectedRank != 1 {
			t.Fatalf("stats %+v, want one generation and one rank rejection", st)
		}
	})
}

// A rank of another generation cannot join the mesh: its connection is refused
// and counted, and its own setup fails at its deadline.
func TestTCPStaleGenerationRefused(t *testing.T) {
	defer goleak.VerifyNone(t)
	lns, addrs, err := LoopbackListeners(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	errs := make([]error, 2)
	ts := make([]*TCPTransport, 2)
	RunRanks(2, func(r int) error {
		cfg := DefaultTCPConfig()
		cfg.Generation, cfg.Rank, cfg.Peers, cfg.Listener = uint64(10+r), r, addrs, lns[r]
		ts[r], errs[r] = NewTCPTransport(ctx, cfg)
		return nil
	})
	for r, err := range errs {
		if !errors.Is(err, ErrHandshake) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("rank %d: %v, want handshake failure at the deadline", r, err)
		}
	}
}

// A Recv into a buffer of another size than the Send fails with ErrMismatch
// instead of truncating or hanging.
func TestSendRecvSizeMismatch(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		cs := NewTestGroup(t, kind, 2, testConfig(2, nil))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := RunRanks(2, func(r int) error {
			if r == 0 {
				return cs[0].Send(ctx, 1, F32(make([]float32, 10)))
			}
			return cs[1].Recv(ctx, 0, F32(make([]float32, 12)))
		})
		if !errors.Is(errs[1], ErrMismatch) {
			t.Fatalf("receiver: %v, want ErrMismatch", errs[1])
		}
	})
}
