package main

import (
	"context"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/coordinator/web"
	"github.com/loomtrain/loom/metrics"
)

// coordinatorHTTP is a coordinator's HTTP listeners, bound before the
// coordinator starts so that a taken port is refused before any work: the
// status page (with /metrics) and /metrics alone, each with the probes
// /healthz and /readyz (coordinator.Server.HealthHandler); nil when off.
type coordinatorHTTP struct{ page, metrics net.Listener }

// listenCoordinatorHTTP binds the listeners of the --http-addr and
// --metrics-addr given (empty: off).
func listenCoordinatorHTTP(pageAddr, metricsAddr string) (*coordinatorHTTP, error) {
	h := &coordinatorHTTP{}
	var err error
	if pageAddr != "" {
		if h.page, err = metrics.Listen(pageAddr, "--http-addr"); err != nil {
			return nil, err
		}
	}
	if metricsAddr != "" {
		if h.metrics, err = metrics.Listen(metricsAddr, "--metrics-addr"); err != nil {
			h.close()
			return nil, err
		}
	}
	return h, nil
}

// close releases listeners that serve never took.
func (h *coordinatorHTTP) close() {
	for _, ln := range []net.Listener{h.page, h.metrics} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// serve serves srv's status page and metrics on the bound listeners; the
// returned function stops them and waits until they have.
func (h *coordinatorHTTP) serve(ctx context.Context, srv *coordinator.Server, log *zap.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	reg := metrics.NewRegistry()
	reg.MustRegister(srv.Collector())
	var waits []func()
	withHealth := func(h http.Handler) http.Handler {
		mux := http.NewServeMux()
		mux.Handle("/healthz", srv.HealthHandler())
		mux.Handle("/readyz", srv.HealthHandler())
		mux.Handle("/", h)
		return mux
	}
	if h.page != nil {
		waits = append(waits, metrics.ServeHandler(ctx, h.page, withHealth(web.Handler(srv.FSM(), metrics.Handler(reg, log))), log))
		log.Info("serving the status page", zap.String("url", "http://"+h.page.Addr().String()+"/"))
	}
	if h.metrics != nil {
		waits = append(waits, metrics.ServeHandler(ctx, h.metrics, withHealth(metrics.Handler(reg, log)), log))
		log.Info("serving metrics", zap.String("addr", h.metrics.Addr().String()), zap.String("path", "/metrics"))
	}
	return func() {
		cancel()
		for _, w := range waits {
			w()
		}
	}
}
