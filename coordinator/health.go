package coordinator

import (
	"context"
	"net/http"
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

// HealthHandler serves the same two answers over plain HTTP, for probes
// that cannot present a client certificate to an mTLS gRPC port (the
// Kubernetes gRPC probe has none): /healthz is 200 while the process
// serves, /readyz 200 while this node knows a Raft leader and 503 while it
// does not. Anything else is 404.
func (s *Server) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if addr, _ := s.raft.LeaderWithID(); addr == "" {
			http.Error(w, "no Raft leader known", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
