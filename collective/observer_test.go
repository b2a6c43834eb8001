package collective

import (
	"context"
	"sync"
	"testing"
	"time"
)

// observation is one ObserveAllReduce call.
type observation struct {
	transport string
	bytes     int64
	took      time.Duration
	rate      float64
}

type recordingObserver struct {
	mu  sync.Mutex
	got []observation
}

func (o *recordingObserver) ObserveAllReduce(transport string, bytes int64, took time.Duration, rate float64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, observation{transport, bytes, took, rate})
}

// observedRing is n communicators over transports of kind, each with a
// recording observer, their testConfig changed by config; closed when t
// ends.
func observedRing(t *testing.T, kind TransportKind, n int, config func(*Config)) ([]*Communicator, []*recordingObserver) {
	t.Helper()
	obs := make([]*recordingObserver, n)
	ts := NewTestTransports(t, kind, 7, n)
	cs := make([]*Communicator, n)
	for r := range n {
		cfg := testConfig(n, nil)
		cfg.Rank = r
		config(&cfg)
		obs[r] = &recordingObserver{}
		cfg.Observer = obs[r]
		var err error
		if cs[r], err = New(ts[r], cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs[r].Close() })
	}
	return cs, obs
}

// Every AllReduce is reported once per rank with the payload bytes the rank
// sent (2(n-1) segments of the wire dtype) and the transport of its link;
// other collectives are not reported.
func TestObserverSeesEachAllReduce(t *testing.T) {
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		const n, size = 3, 3000 // segments of 1000 elements
		for _, tc := range []struct {
			compress Compression
			elemSize int64
		}{{CompressNone, 4}, {CompressBF16, 2}} {
			cs, obs := observedRing(t, kind, n, func(c *Config) { c.Compress = tc.compress })
			bufs := make([][]float32, n)
			for r := range bufs {
				bufs[r] = make([]float32, size)
			}
			mustAll(t, RunRanks(n, func(r int) error {
				for range 2 {
					if err := cs[r].AllReduce(context.Background(), F32(bufs[r])); err != nil {
						return err
					}
				}
				return cs[r].Broadcast(context.Background(), 0, F32(bufs[r]))
			}))
			want := 2 * (n - 1) * size / n * tc.elemSize
			for r, o := range obs {
				if len(o.got) != 2 {
					t.Fatalf("%v rank %d: %d observations, want 2 (the all-reduces only)", tc.compress, r, len(o.got))
				}
				for _, g := range o.got {
					if g.transport != string(kind) || g.bytes != want || g.took <= 0 || !(g.rate > 0) {
						t.Fatalf("%v rank %d: observed %+v, want transport %s, %d bytes and a rate", tc.compress, r, g, kind, want)
					}
				}
			}
		}
	})
}

// The rate leaves out the wait for a rank that starts late: it runs from
// the first all-gather payload, which needs every rank's part.
func TestObserverRateExcludesSkew(t *testing.T) {
	// The late rank's wait is long beside the transfer (1.3 MB a rank on
	// loopback) even on a loaded machine under the race detector.
	const n, late = 3, time.Second
	cs, obs := observedRing(t, TransportTCP, n, func(c *Config) { c.ChunkBytes = DefaultConfig().ChunkBytes })
	mustAll(t, RunRanks(n, func(r int) error {
		if r == n-1 {
			time.Sleep(late)
		}
		return cs[r].AllReduce(context.Background(), F32(make([]float32, 1<<18)))
	}))
	for r := range n - 1 { // the ranks that waited
		g := obs[r].got[0]
		if waited := float64(g.bytes) / g.took.Seconds(); g.took < late || !(g.rate > 2*waited) {
			t.Errorf("rank %d: %d bytes in %v, rate %.3g B/s: want it over twice bytes/took (%.3g)", r, g.bytes, g.took, g.rate, waited)
		}
	}
}
