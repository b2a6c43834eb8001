package collective

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTLSRefusesStrangers: a rank whose certificate comes from another CA,
// or that speaks plain TCP, never joins a TLS mesh; both sides fail within
// their deadline, and the one that dialled says why.
func TestTLSRefusesStrangers(t *testing.T) {
	ours, err := TestTLSConfigs(t, 2)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := TestTLSConfigs(t, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		dialer   *tls.Config
		want     string // in the dialer's error
		acceptor string // in the acceptor's
	}{
		{"another CA", theirs[1], "certificate signed by unknown authority", "remote error: tls: bad certificate"},
		{"plain TCP", nil, "EOF", "does not look like a TLS handshake"},
	} {
		t.Run(c.name, func(t *testing.T) {
			lns, addrs, err := LoopbackListeners(2)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for r, tc := range []*tls.Config{ours[0], c.dialer} {
				wg.Go(func() {
					cfg := DefaultTCPConfig()
					cfg.Generation, cfg.Rank, cfg.Peers, cfg.Listener, cfg.TLS = 1, r, addrs, lns[r], tc
					tr, err := NewTCPTransport(ctx, cfg)
					if err == nil {
						_ = tr.Close()
					}
					errs[r] = err
				})
			}
			wg.Wait()
			if errs[0] == nil || !strings.Contains(errs[0].Error(), "mesh incomplete") || !strings.Contains(errs[0].Error(), c.acceptor) {
				t.Fatalf("acceptor: %v, want %q", errs[0], c.acceptor)
			}
			if errs[1] == nil || !strings.Contains(errs[1].Error(), c.want) {
				t.Fatalf("dialer: %v, want %q", errs[1], c.want)
			}
		})
	}
}

// TestTLSCountsRefusals: a refused handshake is counted on the acceptor,
// whose mesh then completes with the rightful peer.
func TestTLSCountsRefusals(t *testing.T) {
	ours, err := TestTLSConfigs(t, 2)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := TestTLSConfigs(t, 1)
	if err != nil {
		t.Fatal(err)
	}
	lns, addrs, err := LoopbackListeners(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ts [2]*TCPTransport
	newRank := func(r int) error {
		cfg := DefaultTCPConfig()
		cfg.Generation, cfg.Rank, cfg.Peers, cfg.Listener, cfg.TLS = 1, r, addrs, lns[r], ours[r]
		var err error
		ts[r], err = NewTCPTransport(ctx, cfg)
		return err
	}
	rank0 := make(chan error, 1)
	go func() { rank0 <- newRank(0) }()
	// A stranger dials rank 0 first and is refused; then rank 1 joins.
	strangerCfg := theirs[0].Clone()
	strangerCfg.VerifyConnection = nil // it trusts anyone; rank 0 must still refuse it
	d := &tls.Dialer{Config: strangerCfg}
	c, err := d.DialContext(ctx, "tcp", addrs[0])
	if err == nil {
		var b [1]byte
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(b[:]) // TLS 1.3 reports the refused client certificate here
		_ = c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("stranger: %v", err)
	}
	if err := newRank(1); err != nil {
		t.Fatal(err)
	}
	if err := <-rank0; err != nil {
		t.Fatal(err)
	}
	defer ts[0].Close()
	defer ts[1].Close()
	if got := ts[0].Stats().RejectedTLS; got != 1 {
		t.Fatalf("rank 0 counted %d refused handshakes, want 1", got)
	}
}
