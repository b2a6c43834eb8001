package netlab

// Shaped links: a rate limit on a host's link with tc's token bucket
// filter (tbf), each way, and latency added in user space by a delaying
// TCP relay (these kernels have no netem).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Shape limits h's link to bitsPerSec each way: a tbf qdisc on h's eth0
// (what h sends) and one on its switch port (what it receives). The bucket
// holds 5 ms of traffic (at least 16 KiB) and a packet waits at most
// 100 ms for tokens before it is dropped, so TCP sees the link's rate as a
// real bottleneck does. Shaping a shaped link replaces its rate; 0 removes
// the limit.
func (h *Host) Shape(bitsPerSec int64) error {
	ctx := context.Background()
	devs := [][2]string{{h.NS, "eth0"}, {h.lab.prefix, h.port}}
	for _, d := range devs {
		if bitsPerSec == 0 {
			if _, err := tcCmd(ctx, d[0], "qdisc", "del", "dev", d[1], "root"); err != nil && !strings.Contains(err.Error(), "No such file") &&
				!strings.Contains(err.Error(), "Cannot delete qdisc with handle of zero") {
				return err
			}
			continue
		}
		if bitsPerSec < 8000 {
			return fmt.Errorf("netlab: shape %s: %d bit/s: want at least 8000", h.Name, bitsPerSec)
		}
		burst := max(bitsPerSec/8/200, 16<<10)
		if _, err := tcCmd(ctx, d[0], "qdisc", "replace", "dev", d[1], "root", "tbf",
			"rate", fmt.Sprintf("%dbit", bitsPerSec), "burst", fmt.Sprint(burst), "latency", "100ms"); err != nil {
			return err
		}
	}
	return nil
}

// tcCmd runs `tc -n ns args...`.
func tcCmd(ctx context.Context, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ipTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, "tc", append([]string{"-n", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netlab: tc -n %s %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Relay is a TCP relay that delays what it forwards: a connection to its
// address is forwarded to its target, each byte held for the delay in
// each direction (a round trip through it gains twice the delay). It runs
// in the caller's namespace, on the lab's bridge (ControllerIP), so a host
// that dials it crosses its own (shaped) link and the target's.
//
// Latency is added per read: what the relay reads from one side at time
// t it writes to the other at t + delay, in order, with at most
// relayQueue reads in flight each way (a full queue stops reading, so the
// sender's TCP window closes as it would on a long link). Each side's TCP
// runs its own window over its own short leg, so a sender is not slowed by
// the round trip as it would be on a real long link with a small window:
// the delay a message sees is real, the window's stall is not.
type Relay struct {
	ln     net.Listener
	target string
	delay  time.Duration
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

const (
	relayQueue = 256
	relayChunk = 64 << 10
)

// Relay starts a delaying relay to target (host:port) on the lab's
// bridge; Close it (Lab.Close does not).
func (l *Lab) Relay(target string, delay time.Duration) (*Relay, error) {
	if delay < 0 {
		return nil, fmt.Errorf("netlab: relay delay %v: want >= 0", delay)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(l.ControllerIP(), "0"))
	if err != nil {
		return nil, fmt.Errorf("netlab: relay to %s: %w", target, err)
	}
	r := &Relay{ln: ln, target: target, delay: delay, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the address to dial instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Close stops accepting, closes every relayed connection and waits for
// the relay's goroutines.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

// track records c for Close; false if the relay is closing (c is closed).
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		_ = c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serve(in)
		}()
	}
}

func (r *Relay) serve(in net.Conn) {
	if !r.track(in) {
		return
	}
	out, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil {
		_ = in.Close()
		return
	}
	if !r.track(out) {
		_ = in.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pump(out, in) }()
	go func() { defer wg.Done(); r.pump(in, out) }()
	wg.Wait()
	r.mu.Lock()
	delete(r.conns, in)
	delete(r.conns, out)
	r.mu.Unlock()
	_ = in.Close()
	_ = out.Close()
}

// pump copies src to dst, each read delivered delay after it was read;
// at src's end it half-closes dst, on an error it closes both.
func (r *Relay) pump(dst, src net.Conn) {
	type piece struct {
		b  []byte
		at time.Time
	}
	q := make(chan piece, relayQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range q {
			time.Sleep(time.Until(p.at))
			if _, err := dst.Write(p.b); err != nil {
				_ = src.Close()
				for range q { // drain until the reader stops
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	for {
		b := make([]byte, relayChunk)
		n, err := src.Read(b)
		if n > 0 {
			q <- piece{b[:n], time.Now().Add(r.delay)}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
}
