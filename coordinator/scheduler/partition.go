package scheduler

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// ModelCost is the per-sample cost of a network's parts: the embedding
// (held by stage 0), Layers identical blocks, and the head (final norm and
// output projection, held by the last stage).
type ModelCost struct {
	Layers int
	// EmbedFLOPs, BlockFLOPs and HeadFLOPs are forward+backward FLOPs per
	// sample; finite and > 0 (the embedding's may be small).
	EmbedFLOPs, BlockFLOPs, HeadFLOPs float64
	// EmbedParams, BlockParams and HeadParams are parameter counts. A
	// stage's state is stateBytesPerParam per parameter, its gradient
	// all-reduce gradBytesPerParam per parameter.
	EmbedParams, BlockParams, HeadParams int64
	// BlockActBytes and HeadActBytes are the activation bytes per sample
	// kept for the backward pass.
	BlockActBytes, HeadActBytes int64
	// BoundaryBytes is the bytes per sample crossing a stage boundary each
	// way: activations forward, their gradient back.
	BoundaryBytes int64
}

// LayerRange is a stage's blocks [First, Last); stage 0 also holds the
// embedding, the last stage the head.
type LayerRange struct{ First, Last int }

const (
	stateBytesPerParam = 16 // fp32 value, gradient, two AdamW moments
	gradBytesPerParam  = 4  // fp32 gradient on the wire
)

func (m *ModelCost) validate() error {
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("%w: model %s %v must be %s", ErrInvalidJob, field, v, want)
	}
	pos := func(f float64) bool { return f > 0 && !math.IsInf(f, 0) }
	switch {
	case m.Layers <= 0:
		return bad("layers", m.Layers, "> 0")
	case !pos(m.EmbedFLOPs):
		return bad("embed_flops", m.EmbedFLOPs, "finite and > 0")
	case !pos(m.BlockFLOPs):
		return bad("block_flops", m.BlockFLOPs, "finite and > 0")
	case !pos(m.HeadFLOPs):
		return bad("head_flops", m.HeadFLOPs, "finite and > 0")
	case m.EmbedParams < 0:
		return bad("embed_params", m.EmbedParams, ">= 0")
	case m.BlockParams < 0:
		return bad("block_params", m.BlockParams, ">= 0")
	case m.HeadParams < 0:
		return bad("head_params", m.HeadParams, ">= 0")
	case m.BlockActBytes < 0:
		return bad("block_act_bytes", m.BlockActBytes, ">= 0")
	case m.HeadActBytes < 0:
		return bad("head_act_bytes", m.HeadActBytes, ">= 0")
	case m.BoundaryBytes < 0:
		return bad("boundary_bytes", m.BoundaryBytes, ">= 0")
	}
	return nil
}

// The step model, for P stages, M micro-batches, stage s with
// blocks b_s and ranks i of speed v_i (full-model samples/s), share x_i and
// link l_i:
//
//	frac_s  = (embed if s == 0 + b_s·block + head if s == P-1) / model FLOPs
//	t_i     = (x_i/M)·frac_s/v_i                         compute of a micro-batch
//	        + Σ over s's boundaries 2·(x_i/M)·BoundaryBytes / min(l_i, l_nbr)
//	t_s     = max_i t_i
//	step    = Σ_s t_s + (M-1)·max_s t_s                   1F1B: fill/drain + steady state
//	        + max_s 2(k_s-1)/k_s · 4·params_s / l_s       the stage gradient all-reduce
//
// l_nbr is the slowest link of the neighbouring stage and l_s that of stage
// s; unknown (0) links are left out of every min, and a term whose links
// are all unknown costs 0. Each boundary is crossed once each way per
// micro-batch (activations forward, gradients back), at different times, so
// both count. The all-reduce runs after the last backward and is not hidden;
// with k_s == 1 it is 0. With one stage this is compute + the all-reduce of
// the whole model: pure data parallelism, against which AutoStages weighs
// pipelines (smaller all-reduces, activations crossing instead).
//
// Memory on rank i of stage s (MemoryBytes 0: not checked):
//
//	16·params_s + min(M, P)·ceil(x_i/M)·(b_s·BlockActBytes + HeadActBytes if last)
//
// Splitting for one candidate (solve): within a stage the shares follow
// speed, so every rank of it takes about B·frac_s/S_s for the stage's
// summed speed S_s whatever its blocks, and its time is a line in the
// stage's FLOPs. Per candidate (workers grouped into stages, in order) the
// stage times and memory limits are tables over the block count, from the
// upper envelope of the ranks' lines. A dynamic program over split points
// picks the contiguous ranges (each >= 1 block, within memory) that
// minimise max_s t_s; a local search moving one block across one boundary
// at a time then minimises the whole step, from that split and from the
// even one. With Job.UniformLayers the even split is the only one: the
// search still picks the workers of each stage (by the step it predicts).
// Which candidates are tried is in stagesearch.go.

// pipeline plans one job: the normalized job and cached model constants.
type pipeline struct {
	j        Job
	m        *ModelCost
	L        int
	total    float64 // model FLOPs per sample
	checkMem bool

	// scratch, reused between candidates
	t, f   []float64
	arg    []int
	maxB   []int
	arCoef []float64
	lines  []line
}

// group is one stage's workers, indices into the pool (fastest first), with
// their shares of the global batch.
type group struct {
	idx     []int
	shares  []int64
	speed   float64
	minMem  int64   // smallest known memory; 0: none known
	minLink float64 // slowest known link; 0: none known
}

// solution is a candidate's best split.
type solution struct {
	groups []*group
	counts []int
	step   float64
}

func newPipeline(j Job) *pipeline {
	m := j.Model
	return &pipeline{
		j: j, m: m, L: m.Layers, checkMem: true,
		total: m.EmbedFLOPs + float64(m.Layers)*m.BlockFLOPs + m.HeadFLOPs,
	}
}

func (pp *pipeline) flops(s, P, b int) float64 {
	f := float64(b) * pp.m.BlockFLOPs
	if s == 0 {
		f += pp.m.EmbedFLOPs
	}
	if s == P-1 {
		f += pp.m.HeadFLOPs
	}
	return f
}

func (pp *pipeline) params(s, P, b int) float64 {
	p := float64(b) * float64(pp.m.BlockParams)
	if s == 0 {
		p += float64(pp.m.EmbedParams)
	}
	if s == P-1 {
		p += float64(pp.m.HeadParams)
	}
	return p
}

// micro is the micro-batches per step of a P-stage plan: Job.Micro, or
// when that is 0 the worker's default (jobspec.PipelineMicro): one for a
// single stage, else twice the stages, at most the global batch.
func (pp *pipeline) micro(P int) int {
	if pp.j.Micro > 0 {
		return pp.j.Micro
	}
	if P <= 1 {
		return 1
	}
	return int(min(pp.j.GlobalBatch, 2*int64(P)))
}

// need is the memory of a stage s of b blocks on a rank with share x.
func (pp *pipeline) need(s, P, b int, x int64) float64 {
	micro := int64(pp.micro(P))
	act := float64(b) * float64(pp.m.BlockActBytes)
	if s == P-1 {
		act += float64(pp.m.HeadActBytes)
	}
	rows := (x + micro - 1) / micro
	return stateBytesPerParam*pp.params(s, P, b) + float64(min(int(micro), P))*float64(rows)*act
}

// maxBlocksEst is about the most blocks stage s can hold on a rank with
// share x and memory mem (> 0), from need's linear form; fitBlocks makes
// it exact.
func (pp *pipeline) maxBlocksEst(s, P int, x, mem int64) int {
	m := float64(mem)
	base := pp.need(s, P, 0, x)
	slope := pp.need(s, P, 1, x) - base
	switch {
	case base > m:
		return 0
	case slope <= 0:
		return pp.L
	}
	return int(min(float64(pp.L), math.Floor((m-base)/slope)))
}

// fitBlocks moves b, an estimate of the most blocks stage s fits on every
// rank of g, to the exact value.
func (pp *pipeline) fitBlocks(pool []Worker, g *group, s, P, b int) int {
	fits := func(b int) bool {
		for k, i := range g.idx {
			if mem := pool[i].MemoryBytes; mem > 0 && pp.need(s, P, b, g.shares[k]) > float64(mem) {
				return false
			}
		}
		return true
	}
	for b > 0 && !fits(b) {
		b--
	}
	for b < pp.L && fits(b+1) {
		b++
	}
	return b
}

// line is a rank's stage time a·F + x for a stage of F FLOPs per sample.
type line struct{ a, x float64 }

// upperHull sorts lines (in place) and returns those on their upper
// envelope for F >= 0, by increasing slope: the max at F is on the hull,
// and moves to later lines as F grows.
func upperHull(lines []line) []line {
	slices.SortFunc(lines, func(p, q line) int {
		if c := cmp.Compare(p.a, q.a); c != 0 {
			return c
		}
		return cmp.Compare(q.x, p.x) // equal slopes: the higher first
	})
	hull := lines[:0]
	for _, ln := range lines {
		if len(hull) > 0 && hull[len(hull)-1].a == ln.a {
			continue // below the line of the same slope kept
		}
		for len(hull) > 0 && hull[len(hull)-1].x <= ln.x {
			hull = hull[:len(hull)-1] // steeper and higher at 0: never above
		}
		for len(hull) >= 2 {
			l1, l2 := hull[len(hull)-2], hull[len(hull)-1]
			// l2 is useless if ln overtakes l1 no later than l2 does.
			if (l1.x-ln.x)*(l2.a-l1.a) <= (l1.x-l2.x)*(ln.a-l1.a) {
				hull = hull[:len(hull)-1]
			} else {
				break
			}
		}
		hull = append(hull, ln)
	}
	return hull
}

// slower is the smaller of the known links; 0 when neither is known.
func slower(a, b float64) float64 {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}

// newGroup makes a stage of pool workers idx (ascending, so fastest
// first), dropping its slowest while the slowest's share would be 0.
func (pp *pipeline) newGroup(pool []Worker, idx []int) *group {
	g := &group{idx: slices.Clone(idx)}
	for {
		sp := make([]float64, len(g.idx))
		for k, i := range g.idx {
			sp[k] = pool[i].Speed
		}
		g.shares = apportion(pp.j.GlobalBatch, sp)
		if len(g.idx) == 1 || g.shares[len(g.idx)-1] > 0 {
			break
		}
		g.idx = g.idx[:len(g.idx)-1]
	}
	g.speed, g.minMem, g.minLink = 0, 0, 0
	for _, i := range g.idx {
		w := pool[i]
		g.speed += w.Speed
		if w.MemoryBytes > 0 && (g.minMem == 0 || w.MemoryBytes < g.minMem) {
			g.minMem = w.MemoryBytes
		}
		g.minLink = slower(g.minLink, w.LinkBytesPerSec)
	}
	return g
}

// solve finds the best split of the blocks over groups in stage order, or
// ok == false when none fits memory. With Job.UniformLayers the only split
// is the even one (evenSplit). bound is the step to beat: a
// candidate whose bottleneck cannot beat it skips the local search.
func (pp *pipeline) solve(pool []Worker, groups []*group, bound float64) (counts []int, step float64, ok bool) {
	P, L, M := len(groups), pp.L, pp.micro(len(groups))
	W := L + 1
	pp.t = grow(pp.t, P*W)
	pp.f = grow(pp.f, P*W)
	pp.arg = grow(pp.arg, P*W)
	pp.maxB = grow(pp.maxB, P)
	pp.arCoef = grow(pp.arCoef, P)
	t, f, arg, maxB := pp.t, pp.f, pp.arg, pp.maxB
	bb := float64(pp.m.BoundaryBytes)
	for s, g := range groups {
		var prevLink, nextLink float64
		if s > 0 {
			prevLink = groups[s-1].minLink
		}
		if s < P-1 {
			nextLink = groups[s+1].minLink
		}
		// Rank i takes a_i·F + x_i for a stage of F FLOPs per sample: keep
		// the lines not below another everywhere (a few), then tabulate.
		lines := pp.lines[:0]
		memBound := L
		for k, i := range g.idx {
			w, x := pool[i], g.shares[k]
			rows := float64(x) / float64(M)
			ln := line{a: rows / (w.Speed * pp.total)}
			if bb > 0 {
				if s > 0 {
					if l := slower(w.LinkBytesPerSec, prevLink); l > 0 {
						ln.x += 2 * rows * bb / l
					}
				}
				if s < P-1 {
					if l := slower(w.LinkBytesPerSec, nextLink); l > 0 {
						ln.x += 2 * rows * bb / l
					}
				}
			}
			lines = append(lines, ln)
			if pp.checkMem && w.MemoryBytes > 0 {
				memBound = min(memBound, pp.maxBlocksEst(s, P, x, w.MemoryBytes))
			}
		}
		pp.lines = lines
		hull := upperHull(lines)
		row := t[s*W : (s+1)*W]
		f0, h := pp.flops(s, P, 0), 0
		for b := 1; b <= L; b++ { // F grows with b: walk the hull
			F := f0 + float64(b)*pp.m.BlockFLOPs
			for h+1 < len(hull) && hull[h+1].a*F+hull[h+1].x >= hull[h].a*F+hull[h].x {
				h++
			}
			row[b] = hull[h].a*F + hull[h].x
		}
		if pp.checkMem {
			memBound = pp.fitBlocks(pool, g, s, P, memBound)
		}
		maxB[s] = memBound
		pp.arCoef[s] = 0
		if k := len(g.idx); k > 1 && g.minLink > 0 {
			pp.arCoef[s] = 2 * float64(k-1) / float64(k) * gradBytesPerParam / g.minLink
		}
	}

	if pp.j.UniformLayers { // the even split or nothing
		even := evenSplit(L, P)
		for s, b := range even {
			if b > maxB[s] {
				return nil, 0, false
			}
		}
		return even, pp.objective(even), true
	}

	// Bottleneck DP: f[s][e] is the least max_{r<=s} t_r over splits of
	// blocks [0, e) into stages 0..s; arg its last stage's first block.
	inf := math.Inf(1)
	for i := range f[:P*W] {
		f[i] = inf
	}
	for e := 1; e <= min(L-(P-1), maxB[0]); e++ {
		f[e], arg[e] = t[e], 0
	}
	for s := 1; s < P; s++ {
		prev, cur, ts := f[(s-1)*W:s*W], f[s*W:(s+1)*W], t[s*W:(s+1)*W]
		for e := s + 1; e <= L-(P-1-s); e++ {
			best, at := inf, -1
			for a := e - 1; a >= max(s, e-maxB[s]); a-- {
				c := ts[e-a]
				if c >= best {
					break // fewer blocks before only makes stage s slower
				}
				if v := max(prev[a], c); v < best {
					best, at = v, a
				}
			}
			cur[e], arg[s*W+e] = best, at
		}
	}
	bottleneck := f[(P-1)*W+L]
	if math.IsInf(bottleneck, 1) {
		return nil, 0, false
	}
	dp := make([]int, P)
	for s, e := P-1, L; s >= 0; s-- {
		a := arg[s*W+e]
		dp[s], e = e-a, a
	}
	// Every split's step is at least M·bottleneck (Σt >= max t).
	if float64(M)*bottleneck >= bound {
		return dp, pp.objective(dp), true
	}
	counts, step = pp.descend(dp)
	even := evenSplit(L, P)
	fits := true
	for s, b := range even {
		fits = fits && b <= maxB[s]
	}
	if fits {
		if c, v := pp.descend(even); v < step {
			counts, step = c, v
		}
	}
	return counts, step, true
}

// evenSplit is L blocks over P stages in equal counts, the first L%P
// stages one more.
func evenSplit(L, P int) []int {
	even := make([]int, P)
	for s := range even {
		even[s] = L / P
		if s < L%P {
			even[s]++
		}
	}
	return even
}

// objective is the step model over the current tables for counts.
func (pp *pipeline) objective(counts []int) float64 {
	P, W := len(counts), pp.L+1
	var sum, worst, ar float64
	for s, b := range counts {
		v := pp.t[s*W+b]
		sum += v
		worst = max(worst, v)
		ar = max(ar, pp.arCoef[s]*pp.params(s, P, b))
	}
	return sum + float64(pp.micro(P)-1)*worst + ar
}

// descend improves counts one block across one boundary at a time, taking
// the best move each round, until no move lowers the step.
func (pp *pipeline) descend(counts []int) ([]int, float64) {
	counts = slices.Clone(counts)
	P := len(counts)
	cur := pp.objective(counts)
	for range pp.L * P {
		best, bs, bd := cur*(1-1e-12), -1, 0
		for s := 0; s+1 < P; s++ {
			for _, d := range [2]int{1, -1} { // d = 1: a block moves from s to s+1
				from, to := s, s+1
				if d < 0 {
					from, to = s+1, s
				}
				if counts[from] < 2 || counts[to] >= pp.maxB[to] {
					continue
				}
				counts[from]--
				counts[to]++
				if v := pp.objective(counts); v < best {
					best, bs, bd = v, s, d
				}
				counts[from]++
				counts[to]--
			}
		}
		if bs < 0 {
			break
		}
		counts[bs] -= bd
		counts[bs+1] += bd
		cur = pp.objective(counts)
	}
	return counts, cur
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// computePipeline plans a job with a Model over pool (the usable workers,
// fastest first); live is the number of live workers, for the reason.
// Without a fit over the whole pool it retries without the workers of the
// least memory, level by level, while enough remain.
func computePipeline(j Job, pool []Worker, live int) Plan {
	p := Plan{Stages: j.Stages, GlobalBatch: j.GlobalBatch}
	need := max(j.MinWorkers, j.Stages)
	if len(pool) < need {
		p.Reason = fmt.Sprintf("waiting for workers: %d live, %d usable, need %d", live, len(pool), need)
		return p
	}
	pp := newPipeline(j)
	best, st := pp.search(pool)
	for sub := pool; best == nil; {
		var least int64
		for _, w := range sub {
			if w.MemoryBytes > 0 && (least == 0 || w.MemoryBytes < least) {
				least = w.MemoryBytes
			}
		}
		if least == 0 {
			break
		}
		sub = slices.DeleteFunc(slices.Clone(sub), func(w Worker) bool { return w.MemoryBytes == least })
		if len(sub) < need {
			break
		}
		if best, _ = pp.search(sub); best != nil {
			pool = sub
		}
	}
	if best == nil {
		if !st.memFail {
			p.Reason = fmt.Sprintf("waiting for workers: %d live, %d usable, need %d", live, st.maxRanks, need)
			return p
		}
		pp.checkMem = false
		loose, _ := pp.search(pool)
		p.Reason = pp.memoryReason(pool, loose)
		return p
	}
	return pp.plan(pool, best)
}

// plan turns a solution into ranks in ring order.
func (pp *pipeline) plan(pool []Worker, sol *solution) Plan {
	P := len(sol.groups)
	p := Plan{Stages: P, GlobalBatch: pp.j.GlobalBatch, PredictedStepSeconds: sol.step}
	first := 0
	for s, g := range sol.groups {
		p.Layers = append(p.Layers, LayerRange{First: first, Last: first + sol.counts[s]})
		first += sol.counts[s]
		p.Replicas = max(p.Replicas, len(g.idx))
		for r, i := range g.idx {
			w := pool[i]
			p.Ranks = append(p.Ranks, Rank{
				Rank: len(p.Ranks), WorkerID: w.ID, Addr: w.Addr,
				BatchShare: g.shares[r], Stage: s, Replica: r,
			})
		}
	}
	return p
}

// memoryReason names the worst overflow of the best plan that ignores
// memory.
func (pp *pipeline) memoryReason(pool []Worker, sol *solution) string {
	if sol == nil {
		return "no stage split fits the workers' memory"
	}
	p := pp.plan(pool, sol)
	byID := make(map[string]Worker, len(pool))
	for _, w := range pool {
		byID[w.ID] = w
	}
	var reason string
	worst := 1.0
	for _, r := range p.Ranks {
		w, lr := byID[r.WorkerID], p.Layers[r.Stage]
		if w.MemoryBytes == 0 {
			continue
		}
		need := pp.need(r.Stage, p.Stages, lr.Last-lr.First, r.BatchShare)
		if ratio := need / float64(w.MemoryBytes); ratio > worst {
			worst = ratio
			reason = fmt.Sprintf("stage %d (%s) needs %s on worker %s, which has %s",
				r.Stage, blocks(lr), gib(need), w.ID, gib(float64(w.MemoryBytes)))
		}
	}
	if reason == "" {
		return "no stage split fits the workers' memory"
	}
	return reason
}

func blocks(lr LayerRange) string {
	if lr.Last-lr.First == 1 {
		return fmt.Sprintf("block %d", lr.First)
	}
	return fmt.Sprintf("blocks %d-%d", lr.First, lr.Last-1)
}

func gib(b float64) string { return fmt.Sprintf("%.2f GiB", b/(1<<30)) }
