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
	ln, err := Listen(addr, flag)
	if err != nil {
		return nil, err
	}
	ServeHandler(ctx, ln, Handler(reg, log), log)
	if log != nil {
		log.Info("serving metrics", zap.String("addr", ln.Addr().String()), zap.String("path", "/metrics"))
	}
	return ln.Addr(), nil
}

// Listen listens on addr for TCP; a failure names flag, the option addr
// came from, and the cause ("--http-addr :8080: address already in use").
// Callers bind before they start work, so that a taken port is refused
// first.
func Listen(addr, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, listenCause(err))
	}
	return ln, nil
}

// Handler serves reg at /metrics.
func Handler(reg *prometheus.Registry, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorLog: zap.NewStdLog(log)}))
	return mux
}

// ServeHandler serves h on ln until ctx ends (then it shuts down, letting
// requests in flight finish for up to shutdownGrace). The returned function
// waits until that shutdown is over: callers cancel ctx first.
func ServeHandler(ctx context.Context, ln net.Listener, h http.Handler, log *zap.Logger) (wait func()) {
	if log == nil {
		log = zap.NewNop()
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("http server stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return func() { <-done }
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
