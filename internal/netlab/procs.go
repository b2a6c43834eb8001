package netlab

// The processes of a host: whatever runs in its network namespace, found
// by `ip netns pids`, frozen, thawed and, by Close, killed.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Pids lists the processes that run on h now (every process in its network
// namespace, whoever started it).
func (h *Host) Pids() ([]int, error) { return pids(context.Background(), h.NS) }

// Freeze stops every process on h with SIGSTOP: they keep their sockets,
// and the kernel still acknowledges what arrives, but nothing on h runs
// until Thaw. A process started on h after Freeze runs.
func (h *Host) Freeze() error { return signalAll(context.Background(), h.NS, syscall.SIGSTOP) }

// Thaw resumes every process on h with SIGCONT.
func (h *Host) Thaw() error { return signalAll(context.Background(), h.NS, syscall.SIGCONT) }

func pids(ctx context.Context, ns string) ([]int, error) {
	out, err := ipCmd(ctx, "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var ps []int
	for _, f := range strings.Fields(out) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("netlab: ip netns pids %s: %q is not a pid", ns, f)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// signalAll sends sig to every process in ns; one that exited meanwhile is
// not an error.
func signalAll(ctx context.Context, ns string, sig syscall.Signal) error {
	ps, err := pids(ctx, ns)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		if err := syscall.Kill(p, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("netlab: %v to pid %d in %s: %w", sig, p, ns, err))
		}
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs every process in ns until none is left, for at most
// within (a stopped process dies of SIGKILL too).
func killAll(ctx context.Context, ns string, within time.Duration) error {
	for end := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
		ps, err := pids(ctx, ns)
		if err != nil || len(ps) == 0 {
			return err
		}
		if time.Now().After(end) {
			return fmt.Errorf("netlab: %d processes still in %s after SIGKILL for %v: %v", len(ps), ns, within, ps)
		}
		if err := signalAll(ctx, ns, syscall.SIGKILL); err != nil {
			return err
		}
	}
}
