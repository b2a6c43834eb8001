package train

import (
	"fmt"

	"github.com/loomtrain/loom/data"
)

// ReconcileLedgers returns the entries of one run's sample ledgers (one
// slice per worker) that count as used: every completed entry, plus each
// tentative one whose step some rank completed in the same generation
// (so this rank's part was in the sum it applied) and for which its own
// worker wrote no completed entry. A tentative step that no rank completed
// in its generation was abandoned and redone with the same samples in a
// later one.
//
// A rollback line (the job went back to a checkpoint in generation G)
// undoes the entries of later steps written in generations before G.
func ReconcileLedgers(workers [][]LedgerEntry) []LedgerEntry {
	type key struct {
		epoch, step int
		gen         int64
	}
	var rollbacks []LedgerEntry
	for _, es := range workers {
		for _, e := range es {
			if e.Rollback {
				rollbacks = append(rollbacks, e)
			}
		}
	}
	undone := func(e LedgerEntry) bool {
		for _, r := range rollbacks {
			if e.Gen < r.Gen && e.Step > r.Step {
				return true
			}
		}
		return false
	}
	kept := make([][]LedgerEntry, len(workers))
	for i, es := range workers {
		for _, e := range es {
			if !e.Rollback && !undone(e) {
				kept[i] = append(kept[i], e)
			}
		}
	}
	workers = kept
	done := map[key]bool{}
	for _, es := range workers {
		for _, e := range es {
			if !e.Tentative {
				done[key{e.Epoch, e.Step, e.Gen}] = true
			}
		}
	}
	var out []LedgerEntry
	for _, es := range workers {
		mine := map[key]bool{}
		for _, e := range es {
			if !e.Tentative {
				mine[key{e.Epoch, e.Step, e.Gen}] = true
				out = append(out, e)
			}
		}
		for _, e := range es {
			if k := (key{e.Epoch, e.Step, e.Gen}); e.Tentative && done[k] && !mine[k] {
				mine[k] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// CheckExactlyOnce reports whether the reconciled entries' steps 1..steps
// consumed, in epoch order, exactly the samples of those steps from the
// sampler's (seed, epoch) permutations of a training set of n samples (or
// context windows), each once: batch per step, an epoch being
// ceil(n/batch) steps whose last takes the rest. The error names the first
// sample that was not.
func CheckExactlyOnce(entries []LedgerEntry, n, steps, batch int, seed uint64) error {
	got := map[[2]int]int{} // (epoch, sample) -> count
	for _, e := range entries {
		if e.Step > steps {
			continue
		}
		for _, s := range e.Samples {
			got[[2]int{e.Epoch, s}]++
		}
	}
	// An epoch is ceil(n/batch) steps, its last one partial.
	perEpoch := (n + batch - 1) / batch
	for epoch, left := 0, steps; left > 0; epoch++ {
		s := min(left, perEpoch)
		left -= s
		perm := data.Permutation(n, seed, epoch)
		for off := range min(n, s*batch) {
			key := [2]int{epoch, perm[off]}
			if got[key] != 1 {
				return fmt.Errorf("epoch %d sample %d (position %d) used %d times", epoch, perm[off], off, got[key])
			}
			delete(got, key)
		}
	}
	for k := range got {
		return fmt.Errorf("%d samples used beyond the expected ones, e.g. epoch %d sample %d", len(got), k[0], k[1])
	}
	return nil
}
