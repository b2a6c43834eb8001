package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/api"
)

func newJobsCmd() *cobra.Command {
	var t coordTarget
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List jobs, or cancel one",
		Long: `List every job the coordinators know, with its state, step, plan generation
and newest checkpoint (the job table of 'loom status').`,
		Example: `  loom jobs --coordinator 127.0.0.1:7070
  loom jobs cancel job-0003 --coordinator 127.0.0.1:7070`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				jobs, plans, err := jobsAndPlans(ctx, c.coord)
				if err != nil {
					return err
				}
				if t.json {
					return printProtoJSON(cmd.OutOrStdout(), map[string]any{"jobs": jobs, "plans": plans})
				}
				printJobs(cmd.OutOrStdout(), jobs, plans)
				return nil
			})
		},
	}
	t.flags(cmd)
	cmd.AddCommand(newCancelCmd())
	return cmd
}

func newCancelCmd() *cobra.Command {
	var t coordTarget
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID",
		Short: "Cancel a job: its workers stop and leave, its checkpoints stay",
		Long: `Cancel a running or waiting job. Its plan stream ends, so its workers stop
at once and exit with the job-cancelled status; a 'loom launch' following it
exits non-zero. Recorded checkpoints are kept: 'loom launch --resume' can go
on from the newest. A job that has completed cannot be cancelled (an error);
cancelling a cancelled job changes nothing.`,
		Example: `  loom jobs cancel job-0003 --coordinator 127.0.0.1:7070 --reason "wrong learning rate"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				r, err := c.coord.CancelJob(ctx, &api.CancelJobRequest{JobId: args[0], Reason: reason})
				if err != nil {
					return fmt.Errorf("cancel %s: %w", args[0], err)
				}
				j := r.GetJob()
				if j.GetState() == api.JobState_JOB_STATE_COMPLETED {
					return fmt.Errorf("cancel %s: the job completed at step %d; nothing to cancel", j.GetId(), j.GetStep())
				}
				if t.json {
					return printProtoJSON(cmd.OutOrStdout(), j)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cancelled %s (%s) at step %d: %s\n", j.GetId(), j.GetSpec().GetName(), j.GetStep(), j.GetReason())
				return nil
			})
		},
	}
	t.flags(cmd)
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded on the job (default \"cancelled by request\")")
	return cmd
}
