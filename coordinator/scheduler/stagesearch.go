package scheduler

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
)

// The search over candidates. For a stage count P the usable workers
// (sorted fastest first) are grouped in a few deterministic ways: greedy
// (largest first, to the group furthest below its target) to equal speed
// targets, and to targets that give the embedding's and head's stages the
// speed their fixed cost plus a block needs; the slowest links alone (a
// stage of one all-reduces nothing); runs of similar links; runs of
// similar memory (then links); and, in a full search, a fastest-first snake
// and runs of similar speed. Each grouping is put in stage order as built, by
// speed up and down, by memory, and for up to allOrders stages in every
// order; each is split by solve (partition.go). From the best, the workers
// are regrouped to targets in proportion to the best split's stage costs
// (which balances max t_s) and to their roots (which minimises Σ t_s), the
// groups reordered fastest to costliest, and split again while that helps;
// in small clusters single workers are then moved between stages and pairs
// swapped while that helps. The smallest step wins; ties go to the earlier
// candidate and, with AutoStages, to fewer stages. A group whose slowest
// rank would get no sample drops that rank.
//
// AutoStages searches every count in full up to autoAllWorkers workers.
// Beyond, a quick search (the greedy, link and memory groupings, as built
// and fastest last, then the regrouping) of every count up to 8, counts a
// quarter apart above, and every count near the best three picks the
// autoFull counts to search in full. Cost: a candidate is O(n + P·L) for
// its tables plus an O(P·L²) pruned DP (about O(L²) in practice) and the
// local search; a fixed count tries a few dozen candidates.

// groupings are the candidate partitions of pool (sorted fastest first)
// into P non-empty groups of pool indices, each ascending. The quick ones
// (full false) are the greedy ones, the slowest links alone, runs of
// similar links and runs of similar memory; full adds a fastest-first
// snake and runs of similar speed.
func (pp *pipeline) groupings(pool []Worker, P int, full bool) [][][]int {
	n := len(pool)
	var out [][][]int
	uniform := make([]float64, P)
	for g := range uniform {
		uniform[g] = 1 / float64(P)
	}
	out = append(out, lpt(pool, uniform))
	if w := pp.weightedTargets(P); !slices.Equal(w, uniform) {
		out = append(out, lpt(pool, w))
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	if linksVary(pool) {
		// Slow links cost all-reduces: put the slowest alone (a stage of
		// one all-reduces nothing), or with links like theirs.
		slices.SortStableFunc(order, func(a, b int) int {
			return cmpLink(pool[a].LinkBytesPerSec, pool[b].LinkBytesPerSec) // slowest first
		})
		alone := make([][]int, P)
		for g := range P - 1 {
			alone[g] = []int{order[g]}
		}
		alone[P-1] = slices.Clone(order[P-1:])
		out = append(out, sortedEach(alone), sortedEach(chunks(order, P)))
	}
	if memVaries(pool) { // the least memory together
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int { // most memory first, then links like theirs
			if c := cmpMem(pool[a].MemoryBytes, pool[b].MemoryBytes); c != 0 {
				return -c
			}
			return cmpLink(pool[a].LinkBytesPerSec, pool[b].LinkBytesPerSec)
		})
		out = append(out, sortedEach(chunks(order, P)))
	}
	if !full {
		return out
	}
	snake := make([][]int, P)
	for i := range n {
		r, k := i/P, i%P
		if r%2 == 1 {
			k = P - 1 - k
		}
		snake[k] = append(snake[k], i)
	}
	out = append(out, snake)
	for i := range order {
		order[i] = i
	}
	out = append(out, chunks(order, P))
	return out
}

func sortedEach(gs [][]int) [][]int {
	for _, g := range gs {
		slices.Sort(g)
	}
	return gs
}

// cmpLink orders links with unknown (0) as the fastest.
func cmpLink(a, b float64) int {
	switch {
	case a == b:
		return 0
	case a == 0:
		return 1
	case b == 0:
		return -1
	}
	return cmp.Compare(a, b)
}

func linksVary(pool []Worker) bool {
	for _, w := range pool {
		if w.LinkBytesPerSec != pool[0].LinkBytesPerSec {
			return true
		}
	}
	return false
}

// weightedTargets are speed fractions per stage that give the first and
// last stage at least the speed their fixed part (embedding, head) plus one
// block needs, the rest shared evenly.
func (pp *pipeline) weightedTargets(P int) []float64 {
	tg := make([]float64, P)
	if P == 1 {
		tg[0] = 1
		return tg
	}
	u := 1 / float64(P)
	first := max(u, (pp.m.EmbedFLOPs+pp.m.BlockFLOPs)/pp.total)
	last := max(u, (pp.m.BlockFLOPs+pp.m.HeadFLOPs)/pp.total)
	for g := range tg {
		tg[g] = u
	}
	if first == u && last == u {
		return tg
	}
	tg[0], tg[P-1] = first, last
	if P > 2 {
		rest := max((1-first-last)/float64(P-2), pp.m.BlockFLOPs/pp.total)
		for g := 1; g < P-1; g++ {
			tg[g] = rest
		}
	}
	var sum float64
	for _, v := range tg {
		sum += v
	}
	for g := range tg {
		tg[g] /= sum
	}
	return tg
}

// lpt deals pool (fastest first) to the group furthest below its target
// share of the total speed, keeping enough workers to leave no group empty.
func lpt(pool []Worker, targets []float64) [][]int {
	P := len(targets)
	var total, sum float64
	for _, w := range pool {
		total += w.Speed
	}
	for _, v := range targets {
		sum += v
	}
	total /= sum // targets need not sum to 1
	gs := make([][]int, P)
	cur := make([]float64, P)
	empty := P
	for i, w := range pool {
		mustFill := len(pool)-i == empty
		best, bestDef := -1, 0.0
		for g := range P {
			if mustFill && len(gs[g]) > 0 {
				continue
			}
			if def := targets[g]*total - cur[g]; best < 0 || def > bestDef {
				best, bestDef = g, def
			}
		}
		if len(gs[best]) == 0 {
			empty--
		}
		gs[best] = append(gs[best], i)
		cur[best] += w.Speed
	}
	return gs
}

// chunks cuts order into P runs, the later runs one longer when len(order)
// is not a multiple of P.
func chunks(order []int, P int) [][]int {
	n := len(order)
	gs := make([][]int, P)
	at := 0
	for g := range P {
		size := n / P
		if g >= P-n%P {
			size++
		}
		gs[g] = slices.Clone(order[at : at+size])
		at += size
	}
	return gs
}

// cmpMem orders memories with unknown (0) as the most.
func cmpMem(a, b int64) int {
	if a == b {
		return 0
	}
	if a == 0 || (b != 0 && a > b) {
		return 1
	}
	return -1
}

func memVaries(pool []Worker) bool {
	for _, w := range pool {
		if w.MemoryBytes != pool[0].MemoryBytes {
			return true
		}
	}
	return false
}

// stageOrders are the orders of a grouping's groups to try as stages; with
// all, every order of up to allOrders groups too.
func stageOrders(groups []*group, withMem, all bool) [][]*group {
	out := [][]*group{groups}
	bySpeed := func(a, b *group) int {
		switch {
		case a.speed < b.speed:
			return -1
		case a.speed > b.speed:
			return 1
		}
		return 0
	}
	up := slices.Clone(groups)
	slices.SortStableFunc(up, bySpeed)
	down := slices.Clone(groups)
	slices.SortStableFunc(down, func(a, b *group) int { return -bySpeed(a, b) })
	out = append(out, up, down)
	if withMem { // the most memory last, where the head's activations are
		mem := slices.Clone(groups)
		slices.SortStableFunc(mem, func(a, b *group) int {
			if c := cmpMem(a.minMem, b.minMem); c != 0 {
				return c
			}
			return bySpeed(a, b)
		})
		out = append(out, mem)
	}
	if all && len(groups) <= allOrders {
		perm := make([]int, len(groups))
		for i := range perm {
			perm[i] = i
		}
		for permute(perm) {
			o := make([]*group, len(groups))
			for i, k := range perm {
				o[i] = groups[k]
			}
			out = append(out, o)
		}
	}
	return out
}

// allOrders: a full search tries every order of this many stages or fewer.
const allOrders = 3

// permute advances a to its next permutation in lexicographic order,
// false after the last.
func permute(a []int) bool {
	i := len(a) - 2
	for i >= 0 && a[i] >= a[i+1] {
		i--
	}
	if i < 0 {
		return false
	}
	k := len(a) - 1
	for a[k] <= a[i] {
		k--
	}
	a[i], a[k] = a[k], a[i]
	slices.Reverse(a[i+1:])
	return true
}

// searchStats says why a search found nothing.
type searchStats struct {
	memFail  bool // a candidate with enough ranks did not fit memory
	maxRanks int  // the most ranks of any candidate
}

// search is the best solution over pool for the job's stage count (or,
// with AutoStages, over every count in full for a small pool, else over the
// counts: first with the quick candidates every
// count up to 8, then counts a quarter apart and every count near the best
// three, then with all candidates the autoFull best counts, and counts the
// quick ones did not fit while fewer than autoFull fit); nil if none fits.
func (pp *pipeline) search(pool []Worker) (*solution, searchStats) {
	sr := &searcher{pp: pp, pool: pool, withMem: memVaries(pool), seen: map[string]bool{}, bestOf: map[int]*solution{}}
	if !pp.j.AutoStages {
		sr.stages(pp.j.Stages, true)
		return sr.best, sr.st
	}
	if len(pool) <= autoAllWorkers { // cheap: every count in full
		for P := 1; P <= min(pp.L, len(pool)); P++ {
			sr.stages(P, true)
		}
		return sr.best, sr.st
	}
	type scored struct {
		P    int
		step float64
	}
	var quick []scored
	var unsolved []int
	maxP := min(pp.L, len(pool))
	tried := make([]bool, maxP+1)
	quickAt := func(P int) {
		if P < 1 || P > maxP || tried[P] {
			return
		}
		tried[P] = true
		if sol := sr.stages(P, false); sol != nil {
			quick = append(quick, scored{P, sol.step})
		} else {
			unsolved = append(unsolved, P)
		}
	}
	// Every count up to 8, then steps of a quarter, then every count
	// around the best three.
	gap := func(P int) int { return max(1, P/4) }
	for P := 1; P <= maxP; P += gap(P) {
		quickAt(P)
	}
	quickAt(maxP)
	byStep := func(a, b scored) int {
		if c := cmp.Compare(a.step, b.step); c != 0 {
			return c
		}
		return cmp.Compare(a.P, b.P)
	}
	slices.SortFunc(quick, byStep)
	for _, q := range slices.Clone(quick[:min(3, len(quick))]) {
		for d := 1; d < gap(q.P); d++ {
			quickAt(q.P - d)
			quickAt(q.P + d)
		}
	}
	slices.SortFunc(quick, byStep)
	slices.Sort(unsolved)
	solved := 0
	for _, q := range quick[:min(autoFull, len(quick))] {
		sr.stages(q.P, true)
		solved++
	}
	// Too few counts fit with the quick candidates (memory): try the others
	// in full, fewest stages first, until autoFull have a solution.
	for _, P := range unsolved {
		if solved >= autoFull {
			break
		}
		if sr.stages(P, true) != nil {
			solved++
		}
	}
	return sr.best, sr.st
}

// autoFull is how many of the best stage counts AutoStages searches with
// every candidate; with at most autoAllWorkers workers it searches every
// count so.
const (
	autoFull       = 4
	autoAllWorkers = 16
)

// searcher holds one search's best solution and the candidates tried.
type searcher struct {
	pp      *pipeline
	pool    []Worker
	withMem bool
	seen    map[string]bool
	key     []byte
	best    *solution
	bestOf  map[int]*solution // the best per stage count so far
	st      searchStats
}

// stages searches P stages and returns the best solution for P so far.
// full tries every grouping and order; otherwise only the quick
// groupings (see groupings), as built and fastest last.
func (sr *searcher) stages(P int, full bool) *solution {
	pp, pool := sr.pp, sr.pool
	// A full search of P stands alone (what a fixed P gets), pruned only by
	// its own best; the quick ones share what they saw and the best of all.
	bestP := sr.bestOf[P]
	if full {
		bestP, sr.seen = nil, map[string]bool{}
	}
	defer func() {
		if old := sr.bestOf[P]; old == nil || (bestP != nil && bestP.step < old.step) {
			sr.bestOf[P] = bestP
		}
	}()
	// try solves one candidate, groups in stage order.
	try := func(groups []*group) {
		sr.key = sr.key[:0]
		for _, g := range groups {
			for _, i := range g.idx {
				sr.key = binary.AppendUvarint(sr.key, uint64(i)+1)
			}
			sr.key = append(sr.key, 0)
		}
		if sr.seen[string(sr.key)] {
			return
		}
		sr.seen[string(sr.key)] = true
		bound := math.Inf(1)
		if full && bestP != nil {
			bound = bestP.step
		} else if !full && sr.best != nil {
			bound = sr.best.step
		}
		counts, step, ok := pp.solve(pool, groups, bound)
		if !ok {
			sr.st.memFail = true
			return
		}
		sol := &solution{groups: groups, counts: counts, step: step}
		if bestP == nil || step < bestP.step {
			bestP = sol
		}
		if sr.best == nil || step < sr.best.step || (step == sr.best.step && P < len(sr.best.groups)) {
			sr.best = sol
		}
	}
	build := func(idxs [][]int) []*group {
		groups := make([]*group, P)
		ranks := 0
		for g, idx := range idxs {
			groups[g] = pp.newGroup(pool, idx)
			ranks += len(groups[g].idx)
		}
		sr.st.maxRanks = max(sr.st.maxRanks, ranks)
		if ranks < pp.j.MinWorkers {
			return nil
		}
		return groups
	}
	for _, idxs := range pp.groupings(pool, P, full) {
		if groups := build(idxs); groups != nil {
			orders := stageOrders(groups, sr.withMem, full)
			if !full {
				orders = orders[:2]
			}
			for _, order := range orders {
				try(order)
			}
		}
	}
	// Regroup to the best split's cost per stage, split again, while that
	// helps: the speed each stage needs follows its blocks.
	for range 3 {
		prev := bestP
		if prev == nil {
			break
		}
		// Speed in proportion to cost balances the stages (the steady
		// state, (M-1)·max t_s); in proportion to its root minimises Σ t_s
		// (fill and drain).
		lin, root := make([]float64, P), make([]float64, P)
		for s, b := range prev.counts {
			lin[s] = pp.flops(s, P, b) / pp.total
			root[s] = math.Sqrt(lin[s])
		}
		for _, targets := range [][]float64{lin, root} {
			if groups := build(lpt(pool, targets)); groups != nil {
				try(groups)
			}
		}
		// The same groups, the fastest on the costliest stage.
		pos := make([]int, P)
		for s := range pos {
			pos[s] = s
		}
		slices.SortStableFunc(pos, func(a, b int) int { return cmp.Compare(lin[b], lin[a]) })
		fast := slices.Clone(prev.groups)
		slices.SortStableFunc(fast, func(a, b *group) int { return cmp.Compare(b.speed, a.speed) })
		moved := make([]*group, P)
		for r, s := range pos {
			moved[s] = fast[r]
		}
		try(moved)
		if bestP == prev {
			break
		}
	}
	// Small clusters: move single workers between stages and swap pairs,
	// while that helps (with many workers per stage one worker's place
	// matters little, and the pass would cost too much).
	if full && bestP != nil {
		for range 3 {
			prev := bestP
			if movePass(prev.groups, build, try) > maxMoves {
				break
			}
			if bestP == prev {
				break
			}
		}
	}
	return bestP
}

// maxMoves bounds the candidates of one pass of worker moves and swaps.
const maxMoves = 96

// movePass tries, from groups (in stage order), every move of one worker
// to another stage and every swap of two workers of different stages, if
// there are at most maxMoves of them; it returns how many there are.
func movePass(groups []*group, build func([][]int) []*group, try func([]*group)) int {
	P, n := len(groups), 0
	for _, g := range groups {
		n += len(g.idx)
	}
	pairs := 0
	for a := range groups {
		for b := a + 1; b < P; b++ {
			pairs += len(groups[a].idx) * len(groups[b].idx)
		}
	}
	count := n*(P-1) + pairs
	if count > maxMoves {
		return count
	}
	base := func() [][]int {
		idxs := make([][]int, P)
		for s, g := range groups {
			idxs[s] = slices.Clone(g.idx)
		}
		return idxs
	}
	for a, g := range groups {
		for k, i := range g.idx {
			for b := range P {
				if b == a || len(g.idx) == 1 {
					continue
				}
				idxs := base()
				idxs[a] = slices.Delete(idxs[a], k, k+1)
				idxs[b] = append(idxs[b], i)
				slices.Sort(idxs[b])
				if gs := build(idxs); gs != nil {
					try(gs)
				}
			}
			for b := a + 1; b < P; b++ {
				for kk, j := range groups[b].idx {
					idxs := base()
					idxs[a][k], idxs[b][kk] = j, i
					slices.Sort(idxs[a])
					slices.Sort(idxs[b])
					if gs := build(idxs); gs != nil {
						try(gs)
					}
				}
			}
		}
	}
	return count
}
