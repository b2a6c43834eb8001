package main

import "github.com/spf13/cobra"

// addCommands wires every subcommand. Each command lives in its own file and
// is added here with one line.
func addCommands(root, bench *cobra.Command) {
	root.AddCommand(newLaunchCmd())
	root.AddCommand(newCoordinatorCmd())
	root.AddCommand(newStatusCmd())
	root.AddCommand(newJobsCmd())
	root.AddCommand(newEventsCmd())
	root.AddCommand(newVersionCmd())
	root.AddCommand(newWorkersCmd())
	root.AddCommand(newWorkerCmd())
	root.AddCommand(newCheckpointsCmd())
	root.AddCommand(newEvalCmd())
	root.AddCommand(newDataCmd())
	root.AddCommand(newGenerateCmd())
	root.AddCommand(newPlotCmd())
	root.AddCommand(newCertsCmd())
	bench.AddCommand(newBenchGemmCmd())
	bench.AddCommand(newBenchAllreduceCmd())
	bench.AddCommand(newBenchTrainCmd())
	bench.AddCommand(newBenchGenerateCmd())
	bench.AddCommand(newBenchCoordinatorCmd())
}
