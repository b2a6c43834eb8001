package collective

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Rank, good.Order = 1, []int{2, 0, 1}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"negative rank":    func(c *Config) { c.Rank = -1 },
		"tiny chunk":       func(c *Config) { c.ChunkBytes = 8 },
		"huge chunk":       func(c *Config) { c.ChunkBytes = DefaultMaxFrameBytes + 1 },
		"not permutation":  func(c *Config) { c.Order = []int{0, 0, 1} },
		"out of range":     func(c *Config) { c.Order = []int{0, 1, 3} },
		"rank not in ring": func(c *Config) { c.Rank = 5 },
		"bad compression":  func(c *Config) { c.Compress = 9 },
	} {
		c := good
		c.Order = append([]int(nil), good.Order...)
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	ts := NewMemGroup(4, 3).Transports()
	c := DefaultConfig()
	c.Generation, c.Rank = 5, 0
	if _, err := New(ts[0], c); !errors.Is(err, ErrConfig) {
		t.Errorf("generation mismatch accepted: %v", err)
	}
	c.Generation, c.Order = 4, []int{1, 0}
	if _, err := New(ts[0], c); !errors.Is(err, ErrConfig) {
		t.Errorf("order of the wrong size accepted: %v", err)
	}
	if _, err := ParseCompression("zstd"); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown compression accepted")
	}
	tc := DefaultTCPConfig()
	tc.Peers, tc.Rank = []string{"127.0.0.1:1", "nonsense"}, 0
	if err := tc.Validate(); !errors.Is(err, ErrConfig) {
		t.Errorf("bad peer address accepted: %v", err)
	}
}

func TestShardCoversEverythingOnce(t *testing.T) {
	for n := 1; n <= 9; n++ {
		for size := range 30 {
			next := 0
			for r := range n {
				lo, hi := Shard(size, n, r)
				if lo != next || hi < lo || hi-lo > size/n+1 {
					t.Fatalf("Shard(%d,%d,%d) = [%d,%d), want start %d", size, n, r, lo, hi, next)
				}
				next = hi
			}
			if next != size {
				t.Fatalf("shards of %d over %d end at %d", size, n, next)
			}
		}
	}
}

// Close from another goroutine unblocks a call in progress, which fails with
// ErrClosed; nothing is left running.
func TestCloseDuringCall(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachKind(t, func(t *testing.T, kind TransportKind) {
		cs := NewTestGroup(t, kind, 3, testConfig(3, nil))
		time.AfterFunc(50*time.Millisecond, func() { _ = cs[0].Close() })
		start := time.Now()
		err := cs[0].AllReduce(context.Background(), F32(make([]float32, 100))) // peers never join
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Close took %v to unblock the call", d)
		}
		if err := cs[0].Err(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Err() = %v", err)
		}
	})
}
