package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// NewRegistry returns a registry holding the Go runtime and process
// collectors (go_*, process_*), for the caller's own collectors to join.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// shutdownGrace bounds how long Serve's shutdown waits for scrapes in
// flight once ctx has ended.
const shutdownGrace = 2 * time.Second

// Serve listens on addr and serves reg at /metrics (Prometheus text or
// protobuf exposition, as the scraper asks) until ctx ends. It returns once
// the listener is bound, with its address (addr may name port 0), and logs
// "serving metrics" with it; errors name flag, the option addr came from
// ("--metrics-addr 127.0.0.1:9100: address already in use"). A scrape
// gathers reg concurrently with the collectors' updates, which is safe.
func Serve(ctx context.Context, addr, flag string, reg *prometheus.Registry, log *zap.Logger) (net.Addr, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, listenCause(err))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorLog: zap.NewStdLog(log)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving metrics", zap.String("addr", ln.Addr().String()), zap.String("path", "/metrics"))
	return ln.Addr(), nil
}

// listenCause strips net.Listen's "listen tcp ADDR: bind:" prefix, which
// repeats the address the caller's message already names; the cause (an
// errno such as syscall.EADDRINUSE) still matches errors.Is.
func listenCause(err error) error {
	var sys *os.SyscallError
	if errors.As(err, &sys) {
		return sys.Err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
