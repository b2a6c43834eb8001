// Command loom is the single binary holding every loom role: the CLI that
// launches and inspects jobs, the coordinator, the worker agent, and the
// benchmarks.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "loom",
		Short: "Distributed training for compute-constrained clusters",
		Long: `loom trains neural networks on whatever machines you have: older GPUs,
plain CPUs, ordinary networks, machines that come and go.

Start with:
  loom launch examples/mnist-mlp.yaml     train the example on this machine`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	bench := &cobra.Command{
		Use:   "bench",
		Short: "Measure kernels, collectives and training steps on this machine",
	}
	root.AddCommand(bench)
	addCommands(root, bench)
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "loom:", err)
		os.Exit(1)
	}
}
