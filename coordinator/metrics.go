package coordinator

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loomtrain/loom/api"
)

// serverMetrics are the counters only this process sees (the leader's
// lease expiries, the heartbeats it answered and the failure reports it
// received); everything else the collector reads from Raft and the FSM at
// scrape time.
type serverMetrics struct {
	leaseExpiries  atomic.Uint64
	heartbeats     atomic.Uint64
	failureReports atomic.Uint64
}

// Heartbeats is how many worker heartbeats this node has answered as
// leader since it started.
func (s *Server) Heartbeats() uint64 { return s.metrics.heartbeats.Load() }

// Collector returns a Prometheus collector for this node: Raft state, the
// leader's counters, and per job its step, generation, loss, speed and
// checkpoints (of jobs that have not ended), read at scrape time (nothing is copied on the hot path).
// Every series carries the label node; per-job series also job (its id)
// and name (its name, which workers label their series job with).
func (s *Server) Collector() prometheus.Collector { return &collector{s: s} }

type collector struct{ s *Server }

var (
	descTerm        = prometheus.NewDesc("loom_raft_term", "Current Raft term of this node.", []string{"node"}, nil)
	descCommit      = prometheus.NewDesc("loom_raft_commit_index", "Raft commit index of this node.", []string{"node"}, nil)
	descApplied     = prometheus.NewDesc("loom_raft_applied_index", "Last Raft index applied to this node's state machine.", []string{"node"}, nil)
	descLeader      = prometheus.NewDesc("loom_raft_is_leader", "1 while this node is the Raft leader.", []string{"node"}, nil)
	descPeers       = prometheus.NewDesc("loom_raft_peers", "Other voters in this node's Raft configuration.", []string{"node"}, nil)
	descLeases      = prometheus.NewDesc("loom_coordinator_lease_expiries_total", "Worker leases this node expired while leader.", []string{"node"}, nil)
	descReports     = prometheus.NewDesc("loom_coordinator_failure_reports_total", "Generation failure reports this node received from ranks.", []string{"node"}, nil)
	descHeartbeats  = prometheus.NewDesc("loom_coordinator_heartbeats_total", "Worker heartbeats this node answered while leader (each renews a lease in memory, no Raft entry).", []string{"node"}, nil)
	descEntries     = prometheus.NewDesc("loom_raft_entries_applied_total", "Raft command entries this node's state machine applied since it started, by command.", []string{"node", "kind"}, nil)
	descEvents      = prometheus.NewDesc("loom_coordinator_events_total", "Events this node's state machine applied since it started, by kind.", []string{"node", "kind"}, nil)
	descWorkers     = prometheus.NewDesc("loom_coordinator_workers", "Registered workers by state (live or draining).", []string{"node", "state"}, nil)
	descJobs        = prometheus.NewDesc("loom_coordinator_jobs", "Jobs by state.", []string{"node", "state"}, nil)
	descJobStep     = prometheus.NewDesc("loom_job_step", "Newest step a rank of the job reported.", []string{"node", "job", "name"}, nil)
	descJobGen      = prometheus.NewDesc("loom_job_generation", "The job's current plan generation.", []string{"node", "job", "name"}, nil)
	descJobLoss     = prometheus.NewDesc("loom_job_loss", "The job's newest reported training loss.", []string{"node", "job", "name"}, nil)
	descJobSpeed    = prometheus.NewDesc("loom_job_samples_per_second", "Sum of the measured samples/s of the job's ranks.", []string{"node", "job", "name"}, nil)
	descJobCkpts    = prometheus.NewDesc("loom_job_checkpoints_total", "Checkpoints recorded for the job.", []string{"node", "job", "name"}, nil)
	descJobCkptFail = prometheus.NewDesc("loom_job_checkpoint_failures_total", "Checkpoint writes of the job that failed.", []string{"node", "job", "name"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTerm, descCommit, descApplied, descLeader, descPeers, descLeases, descReports,
		descHeartbeats, descEntries, descEvents, descWorkers, descJobs, descJobStep, descJobGen, descJobLoss, descJobSpeed, descJobCkpts, descJobCkptFail} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s, node := c.s, c.s.cfg.NodeID
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{node}, labels...)...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{node}, labels...)...)
	}
	st := s.raft.Stats()
	stat := func(k string) float64 { v, _ := strconv.ParseFloat(st[k], 64); return v }
	gauge(descTerm, stat("term"))
	gauge(descCommit, stat("commit_index"))
	gauge(descApplied, float64(s.fsm.AppliedIndex()))
	gauge(descPeers, stat("num_peers"))
	leader := 0.0
	if st["state"] == "Leader" {
		leader = 1
	}
	gauge(descLeader, leader)
	counter(descLeases, float64(s.metrics.leaseExpiries.Load()))
	counter(descReports, float64(s.metrics.failureReports.Load()))
	counter(descHeartbeats, float64(s.metrics.heartbeats.Load()))
	for kind, n := range s.fsm.AppliedEntries() {
		counter(descEntries, float64(n), kind)
	}
	for kind, n := range s.fsm.EventCounts() {
		counter(descEvents, float64(n), kind)
	}
	byState := map[string]float64{"live": 0, "draining": 0}
	for _, w := range s.fsm.Workers() {
		if w.GetDraining() {
			byState["draining"]++
		} else {
			byState["live"]++
		}
	}
	for k, v := range byState {
		gauge(descWorkers, v, k)
	}
	jobs := map[string]float64{}
	for _, name := range api.JobState_name {
		jobs[jobStateLabel(api.JobState(api.JobState_value[name]))] = 0
	}
	delete(jobs, "unspecified")
	for _, j := range s.fsm.Jobs() {
		jobs[jobStateLabel(j.GetState())]++
		if jobEnded(j) {
			continue // its series end with it (loom status keeps its figures)
		}
		id, name := j.GetId(), j.GetSpec().GetName()
		gauge(descJobStep, float64(j.GetStep()), id, name)
		gauge(descJobGen, float64(j.GetGeneration()), id, name)
		gauge(descJobLoss, j.GetLastLoss(), id, name)
		gauge(descJobSpeed, s.fsm.JobSpeed(id), id, name)
		counter(descJobCkpts, float64(len(j.GetCheckpoints())), id, name)
		counter(descJobCkptFail, float64(j.GetCheckpointFailures()), id, name)
	}
	for k, v := range jobs {
		gauge(descJobs, v, k)
	}
}

// jobStateLabel is a job state as a label value: "running", "completed".
func jobStateLabel(s api.JobState) string {
	switch s {
	case api.JobState_JOB_STATE_PENDING:
		return "pending"
	case api.JobState_JOB_STATE_RUNNING:
		return "running"
	case api.JobState_JOB_STATE_CANCELLED:
		return "cancelled"
	case api.JobState_JOB_STATE_COMPLETED:
		return "completed"
	}
	return "unspecified"
}
