package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// coordTarget is how a command finds the coordinators: addresses, or
// an etcd discovery URL.
type coordTarget struct {
	coordinator string
	discovery   string
	timeout     time.Duration
	json        bool
	tls         tlsFiles
}

func (t *coordTarget) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&t.coordinator, "coordinator", "", "any coordinator's gRPC address(es), comma-separated (etcd://host:port/prefix also works)")
	f.StringVar(&t.discovery, "discovery", "", "find the coordinators in etcd: etcd://host:port/prefix")
	f.DurationVar(&t.timeout, "timeout", 10*time.Second, "give up after this long")
	f.BoolVar(&t.json, "json", false, "print JSON instead of a table")
	cmd.MarkFlagsMutuallyExclusive("coordinator", "discovery")
	t.tls.flags(cmd)
}

type coordClients struct {
	coord   api.CoordinatorClient
	cluster api.ClusterClient
}

// with dials the coordTarget and runs fn under the command's timeout (none
// when it is 0).
func (t *coordTarget) with(ctx context.Context, fn func(context.Context, *coordClients) error) error {
	cancel := context.CancelFunc(func() {})
	if t.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, t.timeout)
	}
	defer cancel()
	var specs []string
	switch {
	case t.coordinator != "":
		specs = strings.Split(t.coordinator, ",")
	case t.discovery != "":
		specs = []string{t.discovery}
	default:
		return fmt.Errorf("give --coordinator ADDR or --discovery etcd://host:port/prefix")
	}
	addrs, err := api.ResolveAddrs(ctx, specs)
	if err != nil {
		return err
	}
	conn, err := t.tls.dial(addrs)
	if err != nil {
		return err
	}
	defer conn.Close()
	err = fn(ctx, &coordClients{coord: api.NewCoordinatorClient(conn), cluster: api.NewClusterClient(conn)})
	if err != nil {
		id, _ := t.tls.load() // loaded once already, by dial
		err = diagnoseTLS(err, id, addrs)
	}
	if err != nil && ctx.Err() != nil {
		return explainTLS(fmt.Errorf("no answer from %v within %v: %w", addrs, t.timeout, err))
	}
	return explainTLS(err)
}

func newStatusCmd() *cobra.Command {
	var t coordTarget
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the coordinator cluster and every job",
		Long: `Shows the cluster (id, leader, members) and every job with its state, step,
plan generation and newest checkpoint. Any coordinator answers from its
replica, which may trail the leader by a moment.`,
		Example: `  loom status --coordinator 127.0.0.1:7070
  loom status --discovery etcd://127.0.0.1:2379/loom --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				st, err := c.cluster.ClusterStatus(ctx, &api.ClusterStatusRequest{})
				if err != nil {
					return err
				}
				jobs, plans, err := jobsAndPlans(ctx, c.coord)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if t.json {
					return printProtoJSON(out, map[string]any{"cluster": st, "jobs": jobs, "plans": plans})
				}
				printMembers(out, st)
				fmt.Fprintln(out)
				printJobs(out, jobs, plans)
				return nil
			})
		},
	}
	t.flags(cmd)
	return cmd
}

func newWorkersCmd() *cobra.Command {
	var t coordTarget
	cmd := &cobra.Command{
		Use:   "workers",
		Short: "List registered workers: state, generation, rank and share, device, lease",
		Long: `List the registered workers. STATE is training (a rank of its job's current
plan that has reported steps), joining (a rank that has not reported yet),
standby (registered, not in the plan: the job is at max_workers or waiting for
min_workers), draining (leaving at the next step boundary: see
'loom workers drain'), idle (its job has ended) or lost (a peer reported its
generation failed and its heartbeats had stopped, or its lease expired: it is
out of every plan; the most recent 64 are listed, each with why it was
removed, until they register again).`,
		Example: `  loom workers --coordinator 127.0.0.1:7070
  loom workers drain w3 --coordinator 127.0.0.1:7070`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				ws, err := c.coord.ListWorkers(ctx, &api.ListWorkersRequest{})
				if err != nil {
					return err
				}
				all := append(ws.Workers, ws.Lost...)
				if t.json {
					return printProtoJSON(cmd.OutOrStdout(), all)
				}
				places, err := placements(ctx, c.coord)
				if err != nil {
					return err
				}
				printWorkers(cmd.OutOrStdout(), all, places, time.Now())
				return nil
			})
		},
	}
	t.flags(cmd)
	cmd.AddCommand(newDrainCmd())
	return cmd
}

func newDrainCmd() *cobra.Command {
	var t coordTarget
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "drain WORKER_ID",
		Short: "Remove a worker from its job at a step boundary, then let it exit",
		Long: `Drain a worker: the coordinator leaves it out of the next plan, its job's
ranks finish the step in flight and the next, switch to the new generation
together (no step is abandoned, no sample lost), and the worker deregisters
and exits with status 0. The job continues on the other workers, or waits if
that leaves it below min_workers. By default the command waits until the
worker has left; --wait 0 returns at once.`,
		Example: `  loom workers drain w3 --coordinator 127.0.0.1:7070`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			t.timeout += wait
			return t.with(cmd.Context(), func(ctx context.Context, c *coordClients) error {
				r, err := c.coord.DrainWorker(ctx, &api.DrainWorkerRequest{WorkerId: id})
				if err != nil {
					return fmt.Errorf("drain %s: %w", id, err)
				}
				out := cmd.OutOrStdout()
				if wait <= 0 {
					fmt.Fprintf(out, "worker %s is draining\n", id)
					return nil
				}
				fmt.Fprintf(out, "worker %s is draining; waiting up to %v for it to leave\n", id, wait)
				return waitLeft(ctx, c.coord, id, r.GetWorker().GetJobId(), wait, out)
			})
		},
	}
	t.flags(cmd)
	_ = cmd.Flags().MarkHidden("json") // nothing to print but a line
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "wait this long for the worker to leave (0: do not wait)")
	return cmd
}

// waitLeft polls until worker id has deregistered (drained) or was lost.
func waitLeft(ctx context.Context, c api.CoordinatorClient, id, job string, wait time.Duration, out io.Writer) error {
	deadline := time.Now().Add(wait)
	for {
		ws, err := c.ListWorkers(ctx, &api.ListWorkersRequest{})
		if err != nil {
			return err
		}
		if slices.ContainsFunc(ws.GetLost(), func(w *api.Worker) bool { return w.GetId() == id }) {
			return fmt.Errorf("worker %s's lease expired before it left cleanly (it died or lost the coordinator)", id)
		}
		if !slices.ContainsFunc(ws.GetWorkers(), func(w *api.Worker) bool { return w.GetId() == id }) {
			fmt.Fprintf(out, "worker %s drained and left\n", id)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %s is still registered after %v; it stays draining (see loom workers)", id, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printMembers(w io.Writer, st *api.ClusterStatusResponse) {
	fmt.Fprintf(w, "cluster %s  leader %s  (answered by %s, %s, applied index %d)\n",
		st.ClusterId, dashIfEmpty(st.LeaderId), st.NodeId, strings.ToLower(st.RaftState), st.AppliedIndex)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tGRPC\tRAFT")
	for _, m := range st.Members {
		role := dashIfEmpty(m.Suffrage)
		if m.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Id, role, dashIfEmpty(m.GrpcAddr), m.RaftAddr)
	}
	_ = tw.Flush()
}

// jobsAndPlans lists every job and, by job id, its current plan.
func jobsAndPlans(ctx context.Context, c api.CoordinatorClient) ([]*api.Job, map[string]*api.Plan, error) {
	jobs, err := c.ListJobs(ctx, &api.ListJobsRequest{})
	if err != nil {
		return nil, nil, err
	}
	plans := map[string]*api.Plan{}
	for _, j := range jobs.GetJobs() {
		if r, err := c.GetJob(ctx, &api.GetJobRequest{JobId: j.GetId()}); err == nil && r.GetPlan() != nil {
			plans[j.GetId()] = r.GetPlan()
		}
	}
	return jobs.GetJobs(), plans, nil
}

func printJobs(w io.Writer, jobs []*api.Job, plans map[string]*api.Plan) {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no jobs")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tNAME\tSTATE\tSTEP\tLOSS\tTEST ACC\tGEN\tRANKS\tCHECKPOINT\tREASON")
	for _, j := range jobs {
		ck := "-"
		if n := len(j.Checkpoints); n > 0 {
			ck = fmt.Sprintf("step %d", j.Checkpoints[n-1].Step)
		}
		if f := j.GetCheckpointFailures(); f > 0 {
			ck += fmt.Sprintf(" (%d FAILED)", f)
		}
		acc := "-"
		if j.GetTestAccuracy() > 0 {
			acc = fmt.Sprintf("%.2f%%", 100*j.GetTestAccuracy())
		}
		p := plans[j.Id]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.4g\t%s\t%d\t%d\t%s\t%s\n", j.Id, j.Spec.GetName(),
			strings.ToLower(strings.TrimPrefix(j.State.String(), "JOB_STATE_")), j.Step, j.LastLoss, acc,
			j.Generation, len(p.GetRanks()), ck, dashIfEmpty(j.Reason))
	}
	_ = tw.Flush()
	for _, j := range jobs {
		if p := plans[j.Id]; len(p.GetStageLayers()) > 1 && len(p.GetRanks()) > 0 {
			fmt.Fprintf(w, "%s pipeline: %s\n", j.Id, describePipeline(p))
		}
	}
	for _, j := range jobs {
		if j.GetCheckpointFailures() == 0 {
			continue
		}
		final := ""
		if j.GetState() == api.JobState_JOB_STATE_COMPLETED && j.GetCheckpointFailedStep() == j.GetStep() {
			final = "; the job has NO final checkpoint"
		}
		fmt.Fprintf(w, "%s: %d checkpoint write(s) failed, the newest at step %d: %s%s\n", j.GetId(), j.GetCheckpointFailures(),
			j.GetCheckpointFailedStep(), j.GetCheckpointError(), final)
	}
}

// describePipeline is a pipeline plan in one line: each stage's blocks
// and workers, and the predicted step time.
func describePipeline(p *api.Plan) string {
	var parts []string
	for s, l := range p.GetStageLayers() {
		var ws []string
		for _, r := range p.GetRanks() {
			if int(r.GetStage()) == s {
				ws = append(ws, r.GetWorkerId())
			}
		}
		parts = append(parts, fmt.Sprintf("stage %d blocks %s on %s", s, blockRange(l), strings.Join(ws, ",")))
	}
	out := strings.Join(parts, "; ")
	if t := p.GetPredictedStepSeconds(); t > 0 {
		out += fmt.Sprintf("; predicted step %.3g s", t)
	}
	return out
}

// blockRange is a stage's blocks as "2-3" (or "2" for one).
func blockRange(l *api.LayerRange) string {
	if l.GetLast()-l.GetFirst() == 1 {
		return fmt.Sprint(l.GetFirst())
	}
	return fmt.Sprintf("%d-%d", l.GetFirst(), l.GetLast()-1)
}

// placement is where a worker sits in its job's current plan.
type placement struct {
	gen         int64
	stage       int
	blocks      string // the stage's blocks ("-" without pipeline stages)
	rank, share int64
	ended       bool // the job is cancelled or completed
	inPlan      bool
}

// placements maps worker ids to their place in the current plans.
func placements(ctx context.Context, c api.CoordinatorClient) (map[string]placement, error) {
	jobs, err := c.ListJobs(ctx, &api.ListJobsRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]placement{}
	for _, j := range jobs.GetJobs() {
		ended := j.GetState() == api.JobState_JOB_STATE_CANCELLED || j.GetState() == api.JobState_JOB_STATE_COMPLETED
		r, err := c.GetJob(ctx, &api.GetJobRequest{JobId: j.GetId()})
		if err != nil {
			return nil, err
		}
		lays := r.GetPlan().GetStageLayers()
		for _, rk := range r.GetPlan().GetRanks() {
			blocks := "-"
			if st := int(rk.GetStage()); len(lays) > 1 && st < len(lays) {
				blocks = blockRange(lays[st])
			}
			out[rk.GetWorkerId()] = placement{gen: r.GetPlan().GetGeneration(), stage: int(rk.GetStage()), blocks: blocks,
				rank: int64(rk.GetRank()), share: rk.GetBatchShare(), ended: ended, inPlan: !ended}
		}
		if ended {
			out[j.GetId()] = placement{ended: true} // keyed by job: for pinned workers
		}
	}
	return out, nil
}

func workerState(x *api.Worker, p placement, places map[string]placement) string {
	switch {
	case x.GetLostUnixNano() != 0:
		return "lost"
	case x.GetDraining():
		return "draining"
	case p.inPlan && x.GetSamplesPerSecond() > 0:
		return "training"
	case p.inPlan:
		return "joining"
	case places[x.GetJobId()].ended || p.ended:
		return "idle"
	}
	return "standby"
}

func printWorkers(w io.Writer, ws []*api.Worker, places map[string]placement, now time.Time) {
	if len(ws) == 0 {
		fmt.Fprintln(w, "no workers")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tSTATE\tJOB\tGEN\tRANK\tSTAGE\tBLOCKS\tSHARE\tDEVICE\tCORES\tGFLOP/S\tSAMPLES/S\tLINK\tLEASE\tCOLLECTIVE")
	for _, x := range ws {
		pl := places[x.Id]
		gen, rank, stage, blocks, share := "-", "-", "-", "-", "-"
		if pl.inPlan {
			gen, rank, stage, blocks, share = fmt.Sprint(pl.gen), fmt.Sprint(pl.rank), fmt.Sprint(pl.stage), pl.blocks, fmt.Sprint(pl.share)
		}
		p := x.GetProfile()
		var g []string
		for _, k := range sortedGflopKeys(p.GetGflops()) {
			g = append(g, fmt.Sprintf("%s=%.0f", k, p.GetGflops()[k]))
		}
		lease := time.Unix(0, x.LeaseExpiryUnixNano).Sub(now).Round(100 * time.Millisecond).String()
		switch {
		case x.LostUnixNano != 0:
			lease = fmt.Sprintf("lost %v ago", now.Sub(time.Unix(0, x.LostUnixNano)).Round(time.Second))
		case x.LeaseExpiryUnixNano == 0:
			lease = "unknown (no leader)" // a follower answered: the leases live on the leader
		}
		link := "-"
		if r := x.GetLinkBytesPerSecond(); r > 0 {
			link = fmt.Sprintf("%.0fMbit/s", r*8/1e6)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%.1f\t%s\t%s\t%s\n", x.Id, workerState(x, pl, places), dashIfEmpty(x.JobId),
			gen, rank, stage, blocks, share, dashIfEmpty(p.GetDeviceName()), p.GetCores(), dashIfEmpty(strings.Join(g, ",")), x.SamplesPerSecond, link, lease, p.GetCollectiveAddr())
	}
	_ = tw.Flush()
	for _, x := range ws {
		if x.GetLostReason() != "" {
			fmt.Fprintf(w, "%s lost: %s\n", x.GetId(), x.GetLostReason())
		}
	}
}

func sortedGflopKeys(m map[string]float64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printProtoJSON prints protobuf messages (alone, in slices or maps) with their
// proto field names.
func printProtoJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(protoJSONValue(v), "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// printProtoJSONLine prints m as one line of JSON, every field present.
func printProtoJSONLine(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err == nil {
		_, err = fmt.Fprintln(w, string(b))
	}
	return err
}

func protoJSONValue(v any) any {
	switch x := v.(type) {
	case proto.Message:
		b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(x)
		return json.RawMessage(b)
	case []*api.Job:
		out := make([]any, len(x))
		for i := range x {
			out[i] = protoJSONValue(x[i])
		}
		return out
	case []*api.Worker:
		out := make([]any, len(x))
		for i := range x {
			out[i] = protoJSONValue(x[i])
		}
		return out
	case map[string]*api.Plan:
		out := map[string]any{}
		for k, p := range x {
			out[k] = protoJSONValue(p)
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = protoJSONValue(e)
		}
		return out
	}
	return v
}
