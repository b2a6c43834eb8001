package collective

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestSubValidation(t *testing.T) {
	w := NewMemGroup(7, 4).Endpoint(1)
	for _, members := range [][]int{nil, {0, 2}, {1, 1}, {1, 4}, {-1, 1}} {
		if _, err := Sub(w, members); !errors.Is(err, ErrConfig) {
			t.Errorf("Sub(%v): %v, want ErrConfig", members, err)
		}
	}
	s, err := Sub(w, []int{3, 1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Rank() != 1 || s.Size() != 2 || s.Generation() != 7 {
		t.Fatalf("view: rank %d size %d generation %d, want 1 2 7", s.Rank(), s.Size(), s.Generation())
	}
	for _, peer := range []int{-1, 1, 2} {
		err := s.Send(context.Background(), peer, Header{Kind: KindData, Op: OpP2P, DType: 1}, nil)
		if !errors.Is(err, ErrConfig) {
			t.Errorf("Send to local rank %d: %v, want ErrConfig", peer, err)
		}
	}
}

// Local ranks map to world ranks both ways, through a Sub of a Sub too, and
// a Sub of a plain transport does not pose as a shared-memory one.
func TestSubMapsRanks(t *testing.T) {
	g := NewMemGroup(7, 4)
	views := make([]Transport, 4)
	for _, r := range []int{0, 2, 3} {
		outer, err := Sub(g.Endpoint(r), []int{0, 2, 3}) // world 0,2,3 = outer 0,1,2
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := outer.(lender); ok {
			t.Fatal("a Sub of a MemTransport implements lender")
		}
		views[r], err = Sub(outer, []int{2, 0}) // outer 2,0 = world 3,0
		if r == 2 {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("world rank 2 is outside the inner view, got %v", err)
			}
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if views[3].Rank() != 0 || views[0].Rank() != 1 || views[0].Size() != 2 {
		t.Fatalf("inner ranks: world 3 -> %d, world 0 -> %d (size %d), want 0, 1 (2)", views[3].Rank(), views[0].Rank(), views[0].Size())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := Header{Kind: KindData, Op: OpP2P, DType: 1, Seq: 9}
	if err := views[3].Send(ctx, 1, h, []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if err := g.Endpoint(0).Recv(ctx, 3, h, got); err != nil || got[3] != 4 {
		t.Fatalf("world rank 0 from world rank 3: %v %v", got, err)
	}
	if err := g.Endpoint(0).Send(ctx, 3, h, []byte{5, 6, 7, 8}); err != nil {
		t.Fatal(err)
	}
	if err := views[3].Recv(ctx, 1, h, got); err != nil || got[0] != 5 {
		t.Fatalf("inner rank 0 from inner rank 1: %v %v", got, err)
	}
}

// stageWorld is one 4-rank pipeline plan over one world transport per rank:
// two stages of two ranks, {0,1} and {2,3}, each with a ring Communicator
// over a Sub, and a Pipe per rank over the world between r and r^2.
type stageWorld struct {
	world []Transport
	comms []*Communicator
	pipes []*Pipe
}

func newStageWorld(t *testing.T, kind TransportKind, pipeChunk int) *stageWorld {
	t.Helper()
	const n = 4
	w := &stageWorld{world: NewTestTransports(t, kind, 7, n), comms: make([]*Communicator, n), pipes: make([]*Pipe, n)}
	for r := range n {
		stage := []int{r &^ 1, r | 1}
		sub, err := Sub(w.world[r], stage)
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(2, nil)
		cfg.ChunkBytes = 16 << 10
		cfg.Rank = sub.Rank()
		if w.comms[r], err = New(sub, cfg); err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		w.pipes[r] = NewPipe(w.world[r], PipeConfig{ChunkBytes: pipeChunk})
	}
	t.Cleanup(func() {
		for r := range n {
			_ = w.comms[r].Close()
			_ = w.pipes[r].Close()
		}
	})
	return w
}

// Two disjoint stage rings of one world all-reduce correctly while the
// pipes between the stages carry activations forward and gradients back,
// on every transport; a stage ring keeps its transport's kind and, on
// shared memory, the in-place fast paths.
func TestSubStagesWithPipe(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n, steps, micro, size, act = 4, 6, 4, 40000, 100000
		w := newStageWorld(t, kind, 64<<10)
		wantKind := map[TransportKind]string{TransportMem: "mem", TransportTCP: "tcp", TransportShm: "tcp", TransportTLS: "tls"}[kind]
		for r, c := range w.comms {
			if c.kind != wantKind {
				t.Fatalf("rank %d: stage ring reports kind %q, want %q", r, c.kind, wantKind)
			}
			if kind == TransportShm && (c.direct == nil || c.lend == nil) {
				t.Fatalf("rank %d: stage ring over shared memory lost its fast paths (direct %v, lend %v)", r, c.direct != nil, c.lend != nil)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		mustAll(t, RunRanks(n, func(r int) error {
			ringErr := make(chan error, 1)
			go func() { ringErr <- stageAllReduces(ctx, w.comms[r], r, steps, size) }()
			perr := pipeTraffic(ctx, w.pipes[r], r, r^2, micro, act)
			if err := <-ringErr; err != nil {
				return err
			}
			return perr
		}))
		if kind == TransportShm {
			if st := w.world[0].Stats(); st.FramesSentShm == 0 {
				t.Fatalf("shm world sent no frame through shared memory: %+v", st)
			}
		}
	})
}

// stageAllReduces runs steps AllReduces on rank r's stage ring and checks
// the sums (the ring's ranks are r&^1 and r|1).
func stageAllReduces(ctx context.Context, c *Communicator, r, steps, size int) error {
	buf := make([]float32, size)
	for s := range steps {
		for i := range buf {
			buf[i] = intInput(r+s, i)
		}
		if err := c.AllReduce(ctx, F32(buf)); err != nil {
			return fmt.Errorf("rank %d step %d: %w", r, s, err)
		}
		for i, got := range buf {
			if want := intInput(r&^1+s, i) + intInput(r|1+s, i); got != want {
				return fmt.Errorf("rank %d step %d elem %d: sum %v, want %v", r, s, i, got, want)
			}
		}
	}
	return nil
}

// pipeTraffic plays one rank of a two-stage pipeline: the first stage
// (peer > r) sends micro activations and then receives their gradients; the
// second receives each activation and sends back a gradient made from it.
func pipeTraffic(ctx context.Context, p *Pipe, r, peer, micro, size int) error {
	buf := make([]float32, size)
	if r < peer {
		for m := range micro {
			fill(buf, r, m)
			if err := p.Send(peer, buf); err != nil {
				return fmt.Errorf("rank %d: send activation %d: %w", r, m, err)
			}
		}
		for m := range micro {
			if err := p.Recv(ctx, peer, buf); err != nil {
				return fmt.Errorf("rank %d: recv gradient %d: %w", r, m, err)
			}
			if err := check(buf, r, m, 1); err != nil {
				return fmt.Errorf("rank %d: gradient %d: %w", r, m, err)
			}
		}
		return p.Flush(ctx)
	}
	for m := range micro {
		if err := p.Recv(ctx, peer, buf); err != nil {
			return fmt.Errorf("rank %d: recv activation %d: %w", r, m, err)
		}
		if err := check(buf, peer, m, 0); err != nil {
			return fmt.Errorf("rank %d: activation %d: %w", r, m, err)
		}
		for i := range buf {
			buf[i]++
		}
		if err := p.Send(peer, buf); err != nil {
			return fmt.Errorf("rank %d: send gradient %d: %w", r, m, err)
		}
	}
	return p.Flush(ctx)
}

// fill writes message m of rank r: integers, exact in float32.
func fill(b []float32, r, m int) {
	for i := range b {
		b[i] = pattern(r, m, i)
	}
}

func pattern(r, m, i int) float32 { return float32((i*31+m*7919+r*104729)%65521 - 30000) }

// check verifies that b is message m of rank r plus delta.
func check(b []float32, r, m int, delta float32) error {
	for i, got := range b {
		if want := pattern(r, m, i) + delta; got != want {
			return fmt.Errorf("elem %d of %d: %v, want %v", i, len(b), got, want)
		}
	}
	return nil
}
