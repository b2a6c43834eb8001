//go:build integ

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFaultMatrix runs every case of the fault script on a real 3+3
// cluster and asserts its correctness parts, never its timings: the job
// completes, every sample is used exactly once, every checkpoint on disk is
// recorded and the final one exists, except on the full disk, where the job
// counts the failed writes and has no final checkpoint. The link-cut and
// full-disk cases need root (a network namespace, a tmpfs mount): make integ
// runs as root, as .ci/run does, and fails them otherwise rather than
// passing without them.
func TestFaultMatrix(t *testing.T) {
	*bin = filepath.Join(t.TempDir(), "loom")
	build := exec.Command("go", "build", "-o", *bin, "github.com/loomtrain/loom/cmd/loom")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build loom: %v\n%s", err, out)
	}
	*device = "cpu:threads=1"
	for _, f := range faultCases() {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			if (f.netns || f.fullDisk) && os.Geteuid() != 0 {
				t.Fatalf("the %q case needs root (ip netns, mount): run make integ as root", f.name)
			}
			r := runCase(f)
			t.Logf("%s", describe(r))
			if !r.completed || r.exactly != nil {
				t.Fatalf("completed %v, exactly once: %v (%s)", r.completed, r.exactly, r.note)
			}
			if r.unrecorded != 0 {
				t.Fatalf("%d checkpoints on disk were never recorded (%s)", r.unrecorded, r.note)
			}
			if f.fullDisk {
				if r.ckFailures == 0 || r.finalCk {
					t.Fatalf("full disk: %d failures recorded, final checkpoint %v (%s)", r.ckFailures, r.finalCk, r.note)
				}
			} else if !r.finalCk || r.ckFailures != 0 {
				t.Fatalf("final checkpoint %v, %d failed writes (%s)", r.finalCk, r.ckFailures, r.note)
			}
		})
	}
}
