package worker

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/device/cpu"
)

// Ranks of one host sum gradients through shared memory unless the worker
// turned it off (--shm-ring 0); either way the sums are the same.
func TestGenerationLinksOnOneHost(t *testing.T) {
	rings := []int{0}
	if runtime.GOOS == "linux" { // the only OS with shared-memory links
		rings = append(rings, collective.DefaultShmRingBytes)
	}
	for _, ring := range rings {
		t.Run(fmt.Sprintf("shm-ring=%d", ring), func(t *testing.T) {
			lns, addrs, err := collective.LoopbackListeners(2)
			if err != nil {
				t.Fatal(err)
			}
			plan := &api.Plan{Generation: 4, GlobalBatch: 8}
			for r, a := range addrs {
				plan.Ranks = append(plan.Ranks, &api.Rank{Rank: int32(r), WorkerId: fmt.Sprintf("w%d", r), CollectiveAddr: a, BatchShare: 4})
			}
			gens := make([]*generation, 2)
			errs := collective.RunRanks(2, func(r int) error {
				var err error
				gens[r], err = joinGeneration(context.Background(), plan, fmt.Sprintf("w%d", r), lns[r], "", linkOpts{shmRing: ring}, nil)
				return err
			})
			for r, err := range errs {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			defer func() {
				for _, g := range gens {
					g.close()
				}
			}()
			bufs := [][]float32{make([]float32, 1000), make([]float32, 1000)}
			for r := range bufs {
				for i := range bufs[r] {
					bufs[r][i] = float32(i + r)
				}
			}
			errs = collective.RunRanks(2, func(r int) error {
				return gens[r].comm.AllReduce(context.Background(), collective.F32(bufs[r]))
			})
			for r, err := range errs {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			for r := range bufs {
				if bufs[r][10] != 21 || bufs[r][999] != 1999 {
					t.Fatalf("rank %d: sums %v %v, want 21 1999", r, bufs[r][10], bufs[r][999])
				}
				st := gens[r].comm.Stats()
				if shm := st.FramesSentShm > 0; shm != (ring > 0) {
					t.Fatalf("rank %d with a %d-byte ring: %d of %d frames through shared memory", r, ring, st.FramesSentShm, st.FramesSent)
				}
			}
		})
	}
}

func TestAgentConfigShmRing(t *testing.T) {
	cfg := DefaultAgentConfig()
	dev, err := cpu.New(cpu.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg.ID, cfg.JobID, cfg.Coordinators, cfg.Device = "w", "j", []string{"127.0.0.1:1"}, dev
	for ring, ok := range map[int]bool{0: true, collective.DefaultShmRingBytes: true, 100: false, -64: false, 2 << 30: false} {
		cfg.ShmRingBytes = ring
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("shared-memory ring of %d bytes: Validate() = %v", ring, err)
		}
	}
}
