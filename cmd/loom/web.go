package main

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/coordinator/web"
	"github.com/loomtrain/loom/metrics"
)

// coordinatorHTTP is a coordinator's HTTP listeners: the status page (with
// /metrics) and /metrics alone, each with the probes /healthz and /readyz
// (coordinator.Server.HealthHandler). They are bound before the coordinator
// starts, so that a taken port is refused before any work, and answer at
// once: until the coordinator has started (a join can take a minute)
// /healthz is 200 and everything else 503, so that a probe gets an answer
// rather than a hung connection.
type coordinatorHTTP struct {
	page, metrics *startingHandler // nil when off
	log           *zap.Logger
	cancel        context.CancelFunc
	waits         []func()
}

// startingHandler serves the starting answers until set is called.
type startingHandler struct {
	ln net.Listener
	h  atomic.Pointer[http.Handler]
}

func (s *startingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := s.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	if r.URL.Path == "/healthz" {
		_, _ = w.Write([]byte("ok (starting)\n"))
		return
	}
	http.Error(w, "the coordinator is starting (joining its cluster)", http.StatusServiceUnavailable)
}

func (s *startingHandler) set(h http.Handler) { s.h.Store(&h) }

// listenCoordinatorHTTP binds and serves the listeners of the --http-addr
// and --metrics-addr given (empty: off).
func listenCoordinatorHTTP(pageAddr, metricsAddr string, log *zap.Logger) (*coordinatorHTTP, error) {
	ctx, cancel := context.WithCancel(context.Background())
	h := &coordinatorHTTP{log: log, cancel: cancel}
	for _, l := range []struct {
		addr, flag string
		to         **startingHandler
	}{{pageAddr, "--http-addr", &h.page}, {metricsAddr, "--metrics-addr", &h.metrics}} {
		if l.addr == "" {
			continue
		}
		ln, err := metrics.Listen(l.addr, l.flag)
		if err != nil {
			h.close()
			return nil, err
		}
		*l.to = &startingHandler{ln: ln}
		h.waits = append(h.waits, metrics.ServeHandler(ctx, ln, *l.to, log))
	}
	return h, nil
}

// close stops the listeners and waits until they have stopped.
func (h *coordinatorHTTP) close() {
	h.cancel()
	for _, w := range h.waits {
		w()
	}
}

// serve switches the listeners to srv's status page and metrics; the
// returned function stops them and waits until they have.
func (h *coordinatorHTTP) serve(srv *coordinator.Server) (stop func()) {
	reg := metrics.NewRegistry()
	reg.MustRegister(srv.Collector())
	withHealth := func(h http.Handler) http.Handler {
		mux := http.NewServeMux()
		mux.Handle("/healthz", srv.HealthHandler())
		mux.Handle("/readyz", srv.HealthHandler())
		mux.Handle("/", h)
		return mux
	}
	if h.page != nil {
		h.page.set(withHealth(web.Handler(srv.FSM(), metrics.Handler(reg, h.log))))
		h.log.Info("serving the status page", zap.String("url", "http://"+h.page.ln.Addr().String()+"/"))
	}
	if h.metrics != nil {
		h.metrics.set(withHealth(metrics.Handler(reg, h.log)))
		h.log.Info("serving metrics", zap.String("addr", h.metrics.ln.Addr().String()), zap.String("path", "/metrics"))
	}
	return h.close
}
