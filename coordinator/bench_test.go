package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
)

// BenchmarkHeartbeat measures one worker heartbeat end to end: gRPC call,
// Raft append (fsync'd to raft-boltdb when on disk) and apply, on a single
// node. Heartbeats are the coordinator's most frequent write.
//
// memory-100jobs has 100 other jobs in the state: a heartbeat answers with
// its worker's generation, and must not pay per job for it.
func BenchmarkHeartbeat(b *testing.B) {
	for _, bc := range []struct {
		name string
		disk bool
		jobs int
	}{{"memory", false, 0}, {"boltdb", true, 0}, {"memory-100jobs", false, 100}} {
		disk := bc.disk
		b.Run(bc.name, func(b *testing.B) {
			s := NewTestServer(b, func(c *Config) {
				c.LeaseTTL = time.Minute
				if disk {
					c.DataDir = b.TempDir()
				}
			})
			ctx := context.Background()
			c := api.NewCoordinatorClient(Dial(b, s.Addr()))
			if _, err := c.RegisterWorker(ctx, &api.RegisterWorkerRequest{WorkerId: "w", Profile: profile("127.0.0.1:9600", 1)}); err != nil {
				b.Fatal(err)
			}
			for i := range bc.jobs {
				if _, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: fmt.Sprint("j", i), GlobalBatch: 8, MinWorkers: 2}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
