package worker

import (
	"os"
	"slices"
	"strings"
	"syscall"
)

// failpoints are the fault-injection points named in LOOM_FAILPOINTS
// (comma-separated), read once at start. At a named point the worker
// process kills itself with SIGKILL: no deregistration, no closed
// connections beyond what the kernel does, as in a real crash. Tests use it
// to crash a worker at a moment no outside signal can hit reliably.
//
//	state-transfer  a joining worker, after receiving the weights and
//	                before the optimizer state
var failpoints = strings.Split(os.Getenv("LOOM_FAILPOINTS"), ",")

// failpoint crashes the process if name is enabled.
func failpoint(name string) {
	if slices.Contains(failpoints, name) {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
