package netlab

// Running ip(8): every change to the kernel's network state goes through
// ipCmd, bounded in time, with an error that names the command and quotes
// what ip said.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ErrNotRoot is returned by New when the process is not root: network
// namespaces, veth pairs and bridges need CAP_NET_ADMIN and CAP_SYS_ADMIN.
var ErrNotRoot = errors.New("netlab: needs root (network namespaces, veth pairs and a bridge need CAP_NET_ADMIN and CAP_SYS_ADMIN)")

// ErrNoIP is returned by New when ip(8) is not on PATH.
var ErrNoIP = errors.New("netlab: ip(8) not found on PATH (install iproute2)")

// ipTimeout bounds one ip(8) invocation: none takes more than moments, and a
// hung one must not hang its caller.
const ipTimeout = 10 * time.Second

// preflight says why this process cannot build a lab, or nil.
func preflight() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("%w: running as uid %d; run as root (for tests: sudo go test -tags integ ...)", ErrNotRoot, uid)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: %w", ErrNoIP, err)
	}
	return nil
}

// ipCmd runs `ip args...` and returns its standard output.
func ipCmd(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ipTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netlab: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
