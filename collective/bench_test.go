package collective

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// benchGroup starts the ranks 1..n-1 of a loopback group in background
// goroutines that mirror every AllReduce rank 0 makes, so the benchmark loop
// (rank 0) measures whole-group operations.
type benchGroup struct {
	cs   []*Communicator
	bufs [][]float32
	step []chan int
	wg   sync.WaitGroup
}

func newBenchGroup(tb testing.TB, kind TransportKind, n, elems int, comp Compression) *benchGroup {
	cfg := DefaultConfig()
	cfg.Generation, cfg.Compress = 1, comp
	g := &benchGroup{cs: NewTestGroup(tb, kind, n, cfg), bufs: make([][]float32, n), step: make([]chan int, n)}
	for r := range n {
		g.bufs[r] = make([]float32, elems)
		for i := range g.bufs[r] {
			g.bufs[r][i] = float32(i % 7)
		}
	}
	for r := 1; r < n; r++ {
		g.step[r] = make(chan int)
		g.wg.Go(func() {
			for iters := range g.step[r] {
				for range iters {
					if err := g.cs[r].AllReduce(context.Background(), F32(g.bufs[r])); err != nil {
						tb.Errorf("rank %d: %v", r, err)
						return
					}
				}
			}
		})
	}
	tb.Cleanup(g.stop)
	return g
}

// run does iters all-reduces on every rank; rank 0's run on this goroutine.
func (g *benchGroup) run(iters int) error {
	for r := 1; r < len(g.cs); r++ {
		g.step[r] <- iters
	}
	for range iters {
		if err := g.cs[0].AllReduce(context.Background(), F32(g.bufs[0])); err != nil {
			return err
		}
	}
	return nil
}

func (g *benchGroup) stop() {
	for r := 1; r < len(g.cs); r++ {
		if g.step[r] != nil {
			close(g.step[r])
			g.step[r] = nil
		}
	}
	g.wg.Wait()
}

// BenchmarkAllReduceTCP: in-process loopback TCP ranks (all sharing this
// process's cores), payloads through the socket (tcp) or through shared
// memory (shm). busbw follows nccl-tests: algbw·2(n-1)/n. allocs/op counts
// every rank's allocations (the whole process).
func BenchmarkAllReduceTCP(b *testing.B) {
	for _, kind := range []TransportKind{TransportTCP, TransportShm} {
		for _, n := range []int{2, 4} {
			for _, mib := range []int{1, 16} {
				for _, comp := range []Compression{CompressNone, CompressBF16} {
					b.Run(fmt.Sprintf("%s/ranks=%d/MiB=%d/%s", kind, n, mib, comp), func(b *testing.B) {
						bytes := mib << 20
						g := newBenchGroup(b, kind, n, bytes/4, comp)
						if err := g.run(2); err != nil { // warm up: grow scratch, arm sockets
							b.Fatal(err)
						}
						b.SetBytes(int64(bytes))
						b.ReportAllocs()
						b.ResetTimer()
						if err := g.run(b.N); err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						alg := float64(bytes) * float64(b.N) / b.Elapsed().Seconds() / 1e9
						b.ReportMetric(alg*2*float64(n-1)/float64(n), "busbw_GB/s")
						g.stop()
					})
				}
			}
		}
	}
}

// Steady-state AllReduce allocates nothing: scratch is kept between calls,
// payloads go from and to the caller's buffer (or its ring in shared
// memory), the sender goroutine persists.
func TestAllReduceSteadyStateAllocatesNothing(t *testing.T) {
	for _, tc := range []struct {
		kind TransportKind
		comp Compression
	}{{TransportTCP, CompressNone}, {TransportTCP, CompressBF16}, {TransportShm, CompressNone}, {TransportShm, CompressBF16}} {
		kind, comp := tc.kind, tc.comp
		g := newBenchGroup(t, kind, 2, 1<<18, comp)
		if err := g.run(3); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(20, func() {
			if err := g.run(1); err != nil {
				t.Fatal(err)
			}
		})
		g.stop()
		if allocs != 0 {
			t.Fatalf("%s %s: %v allocations per all-reduce (whole process, both ranks), want 0", kind, comp, allocs)
		}
	}
}
