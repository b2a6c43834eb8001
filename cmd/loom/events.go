package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/api"
)

func newEventsCmd() *cobra.Command {
	var t coordTarget
	var output string
	var follow bool
	cmd := &cobra.Command{
		Use:   "events [JOB_ID]",
		Short: "Print a job's event log: plans, joins, losses, checkpoints, leader changes",
		Long: `Print what happened to a job, oldest first: its submission, every plan
generation (its ranks, their batch shares and why it was made), workers
joining, draining, leaving and lost (with the confirmed reason), evaluations,
checkpoints recorded or failed, the job's end, and the coordinator leader
changes during its life. Without JOB_ID, every event the coordinators hold.

The log lives in the coordinators' replicated state: it survives a leader
failover and a restart of every coordinator. It keeps the newest 8192 events
of the cluster; older ones are counted as dropped.

-f follows the log (like kubectl logs -f) until the job ends.`,
		Example: `  loom events job-0001 --coordinator 127.0.0.1:7070
  loom events job-0001 --coordinator 127.0.0.1:7070 -f
  loom events job-0001 --coordinator 127.0.0.1:7070 -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "table", "json":
			default:
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if t.json {
				output = "json"
			}
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			if follow {
				if id == "" {
					return fmt.Errorf("-f follows one job: give its JOB_ID")
				}
				t.timeout = 0 // until the job ends or Ctrl-C
			}
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				return printEvents(ctx, cmd.OutOrStdout(), c.coord, id, output == "json", follow)
			})
		},
	}
	t.flags(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json (one JSON object per event)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until the job ends")
	return cmd
}

// printEvents prints job id's events; with follow it polls for new ones
// every second until the job has ended and its last events are printed.
func printEvents(ctx context.Context, w io.Writer, c api.CoordinatorClient, id string, asJSON, follow bool) error {
	var after uint64
	// Fixed columns (not a tabwriter): with -f, rows printed a second apart
	// must line up.
	row := func(a ...any) { fmt.Fprintf(w, "%-12s  %-17s  %-10s  %4s  %6s  %s\n", a...) }
	header := !asJSON
	for {
		// The job's state is read before its events, so that the events of
		// its end are in the last batch printed.
		var ended bool
		if follow {
			j, err := c.GetJob(ctx, &api.GetJobRequest{JobId: id})
			if err != nil {
				return err
			}
			ended = jobDone(j.GetJob())
		}
		r, err := c.ListEvents(ctx, &api.ListEventsRequest{JobId: id, AfterIndex: after})
		if err != nil {
			if id != "" {
				return fmt.Errorf("events of %s: %w", id, err)
			}
			return err
		}
		if header {
			if r.GetDropped() > 0 && after == 0 {
				fmt.Fprintf(w, "(%d older events of the cluster were dropped)\n", r.GetDropped())
			}
			row("TIME", "KIND", "WORKER", "GEN", "STEP", "MESSAGE")
			header = false
		}
		for _, e := range r.GetEvents() {
			after = e.GetIndex()
			if asJSON {
				if err := printProtoJSONLine(w, e); err != nil {
					return err
				}
				continue
			}
			row(time.Unix(0, e.GetUnixNano()).Format("15:04:05.000"), e.GetKind(),
				dash(e.GetWorkerId()), dashInt(e.GetGeneration()), dashInt(e.GetStep()), e.GetMessage())
		}
		if !follow || ended {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil // Ctrl-C ends following
		case <-time.After(time.Second):
		}
	}
}

func jobDone(j *api.Job) bool {
	return j.GetState() == api.JobState_JOB_STATE_COMPLETED || j.GetState() == api.JobState_JOB_STATE_CANCELLED
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dashInt(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
