package collective

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/loomtrain/loom/tensor"
)

var kinds = []TransportKind{TransportMem, TransportTCP, TransportShm, TransportTLS}

// forEachKind runs f as a subtest per transport kind: one suite, every
// implementation.
func forEachKind(t *testing.T, f func(t *testing.T, kind TransportKind)) {
	for _, k := range kinds {
		t.Run(string(k), func(t *testing.T) { f(t, k) })
	}
}

// mustAll fails the test unless every rank's error is nil.
func mustAll(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// intInput is rank r's element i: small integers, so float32 sums are exact.
func intInput(r, i int) float32 { return float32((i*7+r*13)%1001 - 500) }

func testConfig(n int, order []int) Config {
	cfg := DefaultConfig()
	cfg.Generation = 7
	cfg.ChunkBytes = 256 // many sub-chunks even for small buffers
	cfg.Order = order
	return cfg
}

// shuffledOrder returns a deterministic ring order other than the identity.
func shuffledOrder(n int) []int {
	o := rand.New(rand.NewPCG(uint64(n), 1)).Perm(n)
	return o
}

var sizesFor = func(n int) []int { return []int{0, 1, 2, n - 1, n + 1, 3*n + 2, 1000, 4099} }

func TestAllReduceExactIntegers(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for n := 1; n <= 8; n++ {
			for _, order := range [][]int{nil, shuffledOrder(n)} {
				cs := NewTestGroup(t, kind, n, testConfig(n, order))
				for _, size := range sizesFor(n) {
					if size < 0 {
						continue
					}
					bufs := make([][]float32, n)
					for r := range bufs {
						bufs[r] = make([]float32, size)
						for i := range bufs[r] {
							bufs[r][i] = intInput(r, i)
						}
					}
					mustAll(t, RunRanks(n, func(r int) error {
						return cs[r].AllReduce(context.Background(), F32(bufs[r]))
					}))
					for r := range n {
						for i, got := range bufs[r] {
							var want float32
							for s := range n {
								want += intInput(s, i)
							}
							if got != want {
								t.Fatalf("n=%d order=%v size=%d rank %d elem %d: got %v want %v", n, order, size, r, i, got, want)
							}
						}
					}
				}
			}
		}
	})
}

func TestReduceScatterAndAllGather(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for _, n := range []int{1, 2, 3, 5, 8} {
			cs := NewTestGroup(t, kind, n, testConfig(n, shuffledOrder(n)))
			for _, size := range sizesFor(n) {
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, size)
					for i := range bufs[r] {
						bufs[r][i] = intInput(r, i)
					}
				}
				mustAll(t, RunRanks(n, func(r int) error {
					return cs[r].ReduceScatter(context.Background(), F32(bufs[r]))
				}))
				for r := range n {
					lo, hi := Shard(size, n, r)
					for i := lo; i < hi; i++ {
						var want float32
						for s := range n {
							want += intInput(s, i)
						}
						if bufs[r][i] != want {
							t.Fatalf("reducescatter n=%d size=%d rank %d elem %d: got %v want %v", n, size, r, i, bufs[r][i], want)
						}
					}
				}
				// AllGather: each rank contributes its shard, marked by rank.
				for r := range n {
					lo, hi := Shard(size, n, r)
					for i := range bufs[r] {
						bufs[r][i] = -1
						if i >= lo && i < hi {
							bufs[r][i] = float32(r*100000 + i)
						}
					}
				}
				mustAll(t, RunRanks(n, func(r int) error {
					return cs[r].AllGather(context.Background(), F32(bufs[r]))
				}))
				for r := range n {
					for s := range n {
						lo, hi := Shard(size, n, s)
						for i := lo; i < hi; i++ {
							if want := float32(s*100000 + i); bufs[r][i] != want {
								t.Fatalf("allgather n=%d size=%d rank %d elem %d: got %v want %v", n, size, r, i, bufs[r][i], want)
							}
						}
					}
				}
			}
		}
	})
}

func TestBroadcastBarrierSendRecv(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for _, n := range []int{1, 2, 4, 7} {
			cs := NewTestGroup(t, kind, n, testConfig(n, shuffledOrder(n)))
			for root := range n {
				for _, size := range []int{0, 1, 999} {
					bufs := make([][]float32, n)
					for r := range bufs {
						bufs[r] = make([]float32, size)
						for i := range bufs[r] {
							bufs[r][i] = float32(r*1000+i) + 0.25
						}
					}
					mustAll(t, RunRanks(n, func(r int) error {
						if err := cs[r].Barrier(context.Background()); err != nil {
							return err
						}
						return cs[r].Broadcast(context.Background(), root, F32(bufs[r]))
					}))
					for r := range n {
						for i, v := range bufs[r] {
							if want := float32(root*1000+i) + 0.25; v != want {
								t.Fatalf("broadcast n=%d root=%d rank %d elem %d: %v want %v", n, root, r, i, v, want)
							}
						}
					}
				}
			}
			if n < 2 {
				continue
			}
			// Pipeline pattern: rank r sends to r+1, then receives back.
			const size = 1500
			mustAll(t, RunRanks(n, func(r int) error {
				ctx := context.Background()
				out := make([]uint16, size)
				for i := range out {
					out[i] = tensor.ToBF16(float32(r + i))
				}
				in := make([]uint16, size)
				if r > 0 {
					if err := cs[r].Recv(ctx, r-1, Half(tensor.BF16, in)); err != nil {
						return err
					}
					for i, h := range in {
						if h != tensor.ToBF16(float32(r-1+i)) {
							return fmt.Errorf("rank %d elem %d: %#x", r, i, h)
						}
					}
				}
				if r < n-1 {
					return cs[r].Send(ctx, r+1, Half(tensor.BF16, out))
				}
				return nil
			}))
		}
	})
}

func TestCompressionWithinBound(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for _, comp := range []Compression{CompressBF16, CompressF16} {
			for _, n := range []int{2, 3, 8} {
				cfg := testConfig(n, shuffledOrder(n))
				cfg.Compress = comp
				cs := NewTestGroup(t, kind, n, cfg)
				const size = 3001
				rng := rand.New(rand.NewPCG(uint64(n), uint64(comp)))
				bufs := make([][]float32, n)
				exact := make([]float64, size)
				sumAbs := make([]float64, size)
				for r := range bufs {
					bufs[r] = make([]float32, size)
					for i := range bufs[r] {
						v := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(10)-5)))
						bufs[r][i] = v
						exact[i] += float64(v)
						sumAbs[i] += math.Abs(float64(v))
					}
				}
				mustAll(t, RunRanks(n, func(r int) error {
					return cs[r].AllReduce(context.Background(), F32(bufs[r]))
				}))
				for i := range size {
					bound := comp.ErrorBound(n, sumAbs[i])
					for r := range n {
						if d := math.Abs(float64(bufs[r][i]) - exact[i]); d > bound {
							t.Fatalf("%s n=%d rank %d elem %d: error %g over bound %g", comp, n, r, i, d, bound)
						}
						if bufs[r][i] != bufs[0][i] {
							t.Fatalf("%s n=%d elem %d: rank %d has %v, rank 0 %v (ranks must agree)", comp, n, i, r, bufs[r][i], bufs[0][i])
						}
					}
				}
				st := cs[0].Stats()
				if wantMax := uint64(2 * size * 2); st.BytesSent > wantMax {
					t.Fatalf("%s: sent %d payload bytes, more than 16-bit wire allows (%d)", comp, st.BytesSent, wantMax)
				}
			}
		}
	})
}

func TestHalfBuffers(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		for _, d := range []tensor.DType{tensor.BF16, tensor.F16} {
			const n, size = 4, 777
			cs := NewTestGroup(t, kind, n, testConfig(n, nil))
			bufs := make([][]uint16, n)
			for r := range bufs {
				bufs[r] = make([]uint16, size)
				for i := range bufs[r] {
					bufs[r][i] = tensor.ToHalf(d, float32(i%50-25+r)) // small integers: exact in both
				}
			}
			mustAll(t, RunRanks(n, func(r int) error {
				return cs[r].AllReduce(context.Background(), Half(d, bufs[r]))
			}))
			for r := range n {
				for i, h := range bufs[r] {
					want := float32(4*(i%50-25) + 6)
					if got := tensor.FromHalf(d, h); got != want {
						t.Fatalf("%s rank %d elem %d: %v want %v", d, r, i, got, want)
					}
				}
			}
		}
	})
}

func TestMismatchFailsEveryRank(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n = 3
		cs := NewTestGroup(t, kind, n, testConfig(n, nil))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := RunRanks(n, func(r int) error {
			if r == 1 {
				return cs[r].Broadcast(ctx, 0, F32(make([]float32, 100)))
			}
			return cs[r].AllReduce(ctx, F32(make([]float32, 100)))
		})
		mismatch := false
		for r, err := range errs {
			if err == nil {
				t.Fatalf("rank %d: no error", r)
			}
			mismatch = mismatch || isErr(err, ErrMismatch)
		}
		if !mismatch {
			t.Fatalf("no rank reported ErrMismatch: %v", errs)
		}
		if err := cs[0].Barrier(context.Background()); !isErr(err, ErrClosed) {
			t.Fatalf("after failure: %v, want ErrClosed", err)
		}
	})
}
