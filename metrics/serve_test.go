package metrics

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Serve serves the registry it is given, with the Go and process
// collectors of NewRegistry, and stops when its context ends.
func TestServeServesRegistry(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "loom_test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	ctx, cancel := context.WithCancel(t.Context())
	addr, err := Serve(ctx, "127.0.0.1:0", "--metrics-addr", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr.String() + "/metrics"
	s, err := Scrape(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Value("loom_test_things_total"); err != nil || v != 3 {
		t.Fatalf("loom_test_things_total = %v, %v; want 3", v, err)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if len(s.Series(name)) != 1 {
			t.Errorf("%s not served", name)
		}
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr.String())
		if err != nil {
			break // the listener is closed
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("still serving 5 s after its context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A port in use is reported with the flag and address it came from.
func TestServeNamesFlagWhenPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, err = Serve(t.Context(), addr, "--metrics-addr", NewRegistry(), nil)
	want := "--metrics-addr " + addr + ": address already in use"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("error %v does not match EADDRINUSE", err)
	}
	if _, err := Serve(t.Context(), "no-port", "--http-addr", NewRegistry(), nil); err == nil || !strings.HasPrefix(err.Error(), "--http-addr no-port: ") {
		t.Fatalf("bad address: error %v", err)
	}
}
