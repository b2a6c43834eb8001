package collective

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/loomtrain/loom/internal/pki"
)

// Helpers for tests of this package and of its consumers (worker tests build
// a group of communicators in one process with NewTestGroup). They are not
// meant for production wiring, which builds a TCPTransport per process.

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// TransportKind selects the transport a test group runs on.
type TransportKind string

// Transport kinds for NewTestGroup.
const (
	TransportMem TransportKind = "mem"
	TransportTCP TransportKind = "tcp" // loopback TCP, every payload through the socket
	TransportShm TransportKind = "shm" // loopback TCP, payloads through shared memory
	TransportTLS TransportKind = "tls" // loopback TCP over mutual TLS, every payload through the socket
)

// LoopbackListeners binds n listeners on 127.0.0.1 with kernel-chosen ports
// and returns them with their addresses.
func LoopbackListeners(n int) ([]net.Listener, []string, error) {
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns[:i] {
				_ = l.Close()
			}
			return nil, nil, err
		}
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	return lns, addrs, nil
}

// NewLoopbackTCP builds an n-rank TCP mesh on 127.0.0.1 in this process, for
// generation gen. tweak, if not nil, adjusts each rank's config.
func NewLoopbackTCP(ctx context.Context, gen uint64, n int, tweak func(*TCPConfig)) ([]*TCPTransport, error) {
	lns, addrs, err := LoopbackListeners(n)
	if err != nil {
		return nil, err
	}
	ts := make([]*TCPTransport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			cfg := DefaultTCPConfig()
			cfg.Generation, cfg.Rank, cfg.Peers, cfg.Listener = gen, r, addrs, lns[r]
			if tweak != nil {
				tweak(&cfg)
			}
			ts[r], errs[r] = NewTCPTransport(ctx, cfg)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, t := range ts {
			if t != nil {
				_ = t.Close()
			}
		}
		return nil, err
	}
	return ts, nil
}

// NewTestTransports returns n connected transports of the given kind for
// generation gen; they are closed when the test ends.
func NewTestTransports(tb TB, kind TransportKind, gen uint64, n int) []Transport {
	tb.Helper()
	var out []Transport
	switch kind {
	case TransportMem:
		out = NewMemGroup(gen, n).Transports()
	case TransportTCP, TransportShm, TransportTLS:
		tweak := func(c *TCPConfig) { c.ShmRingBytes = 0 }
		switch kind {
		case TransportShm:
			tweak = nil
		case TransportTLS:
			cfgs, err := TestTLSConfigs(tb, n)
			if err != nil {
				tb.Fatalf("tls: %v", err)
			}
			tweak = func(c *TCPConfig) { c.ShmRingBytes, c.TLS = 0, cfgs[c.Rank] }
		}
		ts, err := NewLoopbackTCP(context.Background(), gen, n, tweak)
		if err != nil {
			tb.Fatalf("loopback tcp group: %v", err)
		}
		for _, t := range ts {
			out = append(out, t)
		}
	default:
		tb.Fatalf("unknown transport kind %q", kind)
	}
	tb.Cleanup(func() {
		for _, t := range out {
			_ = t.Close()
		}
	})
	return out
}

// TestTLSConfigs makes a CA and a worker certificate per rank in a
// temporary directory (removed when the test ends) and returns each rank's
// TLS config, admitting workers of that CA, as loom worker builds it.
func TestTLSConfigs(tb TB, n int) ([]*tls.Config, error) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "loom-tls-")
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	caCert, caKey, err := pki.NewCA(pki.InitOptions{Name: "test", Validity: time.Hour})
	if err != nil {
		return nil, err
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, caCert, 0o600); err != nil {
		return nil, err
	}
	out := make([]*tls.Config, n)
	for r := range n {
		c, k, err := pki.Issue(caCert, caKey, pki.IssueOptions{Role: pki.RoleWorker, Name: fmt.Sprintf("w%d", r), Validity: time.Hour})
		if err != nil {
			return nil, err
		}
		f, err := pki.WritePair(dir, fmt.Sprintf("w%d", r), c, k, false)
		if err != nil {
			return nil, err
		}
		f.CA = ca
		id, err := pki.Load(f, pki.RoleWorker)
		if err != nil {
			return nil, err
		}
		out[r] = id.Config(pki.RoleWorker)
	}
	return out, nil
}

// NewTestGroup returns n communicators over transports of the given kind.
// cfg supplies everything but Rank; they are closed when the test ends.
func NewTestGroup(tb TB, kind TransportKind, n int, cfg Config) []*Communicator {
	tb.Helper()
	ts := NewTestTransports(tb, kind, cfg.Generation, n)
	cs := make([]*Communicator, n)
	for r, t := range ts {
		c := cfg
		c.Rank = r
		var err error
		if cs[r], err = New(t, c); err != nil {
			tb.Fatalf("rank %d: %v", r, err)
		}
	}
	tb.Cleanup(func() {
		for _, c := range cs {
			_ = c.Close()
		}
	})
	return cs
}

// RunRanks calls f for every rank concurrently and returns each rank's error.
func RunRanks(n int, f func(rank int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			defer func() {
				if p := recover(); p != nil {
					errs[r] = fmt.Errorf("rank %d panicked: %v", r, p)
				}
			}()
			errs[r] = f(r)
		})
	}
	wg.Wait()
	return errs
}
