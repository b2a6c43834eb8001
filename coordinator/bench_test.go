package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
)

// BenchmarkHeartbeat measures one worker heartbeat end to end: gRPC call,
// Raft append (fsync'd to raft-boltdb when on disk) and apply, on a single
// node. Heartbeats are the coordinator's most frequent write.
func BenchmarkHeartbeat(b *testing.B) {
	for _, disk := range []bool{false, true} {
		name := map[bool]string{false: "memory", true: "boltdb"}[disk]
		b.Run(name, func(b *testing.B) {
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
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{WorkerId: "w"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
