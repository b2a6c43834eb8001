package netlab

// Names and subnets that no two labs share: a lab's prefix carries its
// process's pid (so a lab of a dead process can be told from a live one),
// and its /24 is one that no address or route of the caller's namespace
// covers yet, chosen under a machine-wide lock until the lab's own link
// holds it.

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// lockPath is the machine-wide lock that New holds while it chooses a
// subnet and builds the lab.
const lockPath = "/run/loom-netlab.lock"

var labSeq atomic.Uint64

// newPrefix returns "nl" + pid + "-" + a per-process sequence number, both
// base 36: at most 10 characters, so that the caller-side link (prefix +
// "c") stays within the 15 characters of an interface name.
func newPrefix() string {
	return "nl" + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + strconv.FormatUint(labSeq.Add(1)%1296, 36)
}

// labName matches a lab's namespaces (prefix, prefix-HOST) and its link in
// the caller's namespace (prefix + "c"); group 1 is the owner's pid.
var labName = regexp.MustCompile(`^nl([0-9a-z]{1,6})-[0-9a-z]{1,2}(?:-[a-z0-9]{1,8}|c)?$`)

// lockAllocation takes the machine-wide allocation lock and returns its
// release.
func lockAllocation() (unlock func(), err error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("netlab: allocation lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("netlab: allocation lock %s: %w", lockPath, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// freeSubnet returns an X such that nothing in the caller's namespace
// (addresses, routes) lies in 10.232.X.0/24, starting from one derived
// from the pid to keep concurrent labs apart.
func freeSubnet(ctx context.Context) (int, error) {
	addrs, err := ipCmd(ctx, "-4", "-o", "addr", "show")
	if err != nil {
		return 0, err
	}
	routes, err := ipCmd(ctx, "-4", "route", "show", "table", "all")
	if err != nil {
		return 0, err
	}
	used := addrs + "\n" + routes
	start := os.Getpid() % 256
	for i := range 256 {
		x := (start + i) % 256
		if !strings.Contains(used, fmt.Sprintf("10.232.%d.", x)) {
			return x, nil
		}
	}
	return 0, fmt.Errorf("netlab: no free subnet in 10.232.0.0/16: every /24 is in use")
}

// sweepStale deletes the namespaces and caller-side links of labs whose
// process no longer exists (it died before Close, e.g. a test binary
// killed by its timeout; its processes died with it by Pdeathsig). It
// kills nothing: a namespace that a process still holds lives on unnamed
// until that process exits. Best effort: a failure leaves the leftover.
func sweepStale(ctx context.Context) {
	stale := func(name string) bool {
		m := labName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.ParseInt(m[1], 36, 64)
		return err == nil && pid != int64(os.Getpid()) && syscall.Kill(int(pid), 0) == syscall.ESRCH
	}
	if out, err := ipCmd(ctx, "-o", "link", "show"); err == nil {
		for line := range strings.Lines(out) {
			// "7: nl2hwe8-1c@if3: <...": the name ends at '@' or ':'.
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if stale(name) {
				_, _ = ipCmd(ctx, "link", "del", name)
			}
		}
	}
	if out, err := ipCmd(ctx, "netns", "list"); err == nil {
		for line := range strings.Lines(out) {
			f := strings.Fields(line) // "NAME (id: 3)"
			if len(f) > 0 && stale(f[0]) {
				_, _ = ipCmd(ctx, "netns", "del", f[0])
			}
		}
	}
}
