//go:build unix

package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrLocked: another process holds a job's checkpoint lock.
var ErrLocked = errors.New("checkpoint directory in use")

// LockJob takes the exclusive lock of job's checkpoints under dir (an flock
// on dir/.JOB.lock, released by unlock or when the process exits, however
// it exits) and writes holder into the lock file. While another process
// holds it, LockJob fails with ErrLocked naming that holder: two runs never
// write into one job directory at once (retention would delete the other's
// writes in progress).
func LockJob(dir, job, holder string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	name := filepath.Join(dir, "."+job+".lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(name)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is being written by %s; wait for that run to end or set another checkpoint.dir",
				ErrLocked, filepath.Join(dir, job), strings.TrimSpace(string(b)))
		}
		return nil, fmt.Errorf("checkpoint: lock %s: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(holder+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
