package coordinator

import (
	"context"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// HealthService is the grpc.health.v1 service name that reports whether
// this node can serve the API: SERVING while it knows a Raft leader. The
// empty service name ("", what Kubernetes' gRPC probe asks by default) is
// SERVING while the process runs: a liveness probe.
const HealthService = "loom.v1.Coordinator"

// watchHealth keeps HealthService's status in step with whether a leader
// is known, until ctx ends; then every service reports NOT_SERVING.
func (s *Server) watchHealth(ctx context.Context) {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if addr, _ := s.raft.LeaderWithID(); addr != "" {
			st = healthpb.HealthCheckResponse_SERVING
		}
		s.health.SetServingStatus(HealthService, st)
		select {
		case <-ctx.Done():
			s.health.Shutdown()
			return
		case <-t.C:
		}
	}
}
