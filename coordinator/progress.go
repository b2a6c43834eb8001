package coordinator

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// Progress. Every rank reports every step. The leader checks each report
// at once against its state (a stale generation, a worker not in the plan,
// an ended job are refused) and answers with the current generation, but
// writes to the log:
//   - at once, as one CmdReportProgress each: a final report (it completes
//     the job), an evaluation, and a worker's first measured speed (until
//     every rank of a plan has one, its shares come from device profiles);
//   - every other report folded into one CmdReportProgressBatch per
//     ProgressInterval, holding the newest report of each worker since the
//     last batch (at most maxProgressBatch reports an entry).
//
// So the log grows by one progress entry per interval however many workers
// report. ProgressInterval 0 writes every report as its own entry (tests).
// Reports gathered when leadership ends are dropped: a step report is
// superseded by the next, which reaches the new leader.

// maxProgressBatch bounds the reports of one batch entry (about 100 bytes
// each): a larger cluster writes several entries per interval.
const maxProgressBatch = 1024

// progressBuffer holds, on the leader, the newest step report of each
// worker not yet written. Safe for concurrent use.
type progressBuffer struct {
	mu      sync.Mutex
	seq     uint64
	pending map[string]pendingReport // by worker id
}

type pendingReport struct {
	seq uint64 // arrival order
	cmd *api.CmdReportProgress
}

func newProgressBuffer() *progressBuffer {
	return &progressBuffer{pending: map[string]pendingReport{}}
}

// put replaces worker's pending report with c.
func (b *progressBuffer) put(worker string, c *api.CmdReportProgress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	b.pending[worker] = pendingReport{b.seq, c}
}

// drop forgets worker's pending report (a newer one is written at once).
func (b *progressBuffer) drop(worker string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pending, worker)
}

// reset forgets every pending report (a new term starts).
func (b *progressBuffer) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.pending)
}

// take returns the pending reports in the order they arrived and empties
// the buffer.
func (b *progressBuffer) take() []*api.CmdReportProgress {
	b.mu.Lock()
	ps := make([]pendingReport, 0, len(b.pending))
	for _, p := range b.pending {
		ps = append(ps, p)
	}
	clear(b.pending)
	b.mu.Unlock()
	slices.SortFunc(ps, func(a, b pendingReport) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]*api.CmdReportProgress, len(ps))
	for i, p := range ps {
		out[i] = p.cmd
	}
	return out
}

// reportProgress is the leader's half of ReportProgress.
func (s *Server) reportProgress(ctx context.Context, req *api.ReportProgressRequest) (*api.ReportProgressResponse, error) {
	measured := req.GetStepSeconds() > 0 && req.GetSamples() > 0
	s.fsm.mu.RLock()
	j, noop, err := s.fsm.st.checkProgress(req)
	var gen int64
	if j != nil {
		gen = j.Generation
	}
	w := s.fsm.st.workers[req.GetWorkerId()]
	firstSpeed := measured && w != nil && !(w.GetSamplesPerSecond() > 0)
	s.fsm.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if noop {
		return &api.ReportProgressResponse{Generation: gen}, nil
	}
	var sps float64
	if measured {
		sps = float64(req.GetSamples()) / req.GetStepSeconds()
	}
	cmd := &api.CmdReportProgress{Report: req, SamplesPerSecond: sps, NowUnixNano: time.Now().UnixNano()}
	must := req.GetDone() || req.TestAccuracy != nil || firstSpeed
	if !must && s.cfg.ProgressInterval > 0 {
		s.progress.put(req.GetWorkerId(), cmd)
		return &api.ReportProgressResponse{Generation: gen}, nil
	}
	s.progress.drop(req.GetWorkerId()) // older than this one
	m, _, err := s.apply(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return m.(*api.ReportProgressResponse), nil
}

// flushProgress runs while this node leads: every ProgressInterval it
// writes the gathered step reports as batch entries.
func (s *Server) flushProgress(ctx context.Context) {
	if s.cfg.ProgressInterval <= 0 {
		return // every report is written at once
	}
	tick := time.NewTicker(s.cfg.ProgressInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for reports := s.progress.take(); len(reports) > 0; {
			n := min(len(reports), maxProgressBatch)
			if _, _, err := s.apply(ctx, &api.CmdReportProgressBatch{Reports: reports[:n]}); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("write progress", zap.Int("reports", n), zap.Error(err))
			}
			reports = reports[n:]
		}
	}
}
