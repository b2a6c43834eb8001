package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/coordinator/web"
	"github.com/loomtrain/loom/metrics"
)

// listenFlag listens on addr, given by flag; a taken port is an error
// that names the flag.
func listenFlag(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	return ln, nil
}

// coordinatorRegistry is a Prometheus registry with srv's metrics and the
// process's.
func coordinatorRegistry(srv *coordinator.Server) *prometheus.Registry {
	reg := metrics.NewRegistry()
	reg.MustRegister(srv.Collector())
	return reg
}

// serveStatusPage serves srv's status page (and its /metrics) on ln until
// ctx ends; the returned function waits until the server has stopped.
func serveStatusPage(ctx context.Context, ln net.Listener, srv *coordinator.Server, log *zap.Logger) func() {
	metrics := promhttp.HandlerFor(coordinatorRegistry(srv), promhttp.HandlerOpts{})
	hs := &http.Server{Handler: web.Handler(srv.FSM(), metrics), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status page", zap.Error(err))
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	log.Info("serving the status page", zap.String("url", "http://"+ln.Addr().String()+"/"))
	return func() { <-done }
}
