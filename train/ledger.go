package train

// ReconcileLedgers returns the entries of one run's sample ledgers (one
// slice per worker) that count as used: every completed entry, plus each
// tentative one whose step some rank completed in the same generation
// (so this rank's part was in the sum it applied) and for which its own
// worker wrote no completed entry. A tentative step that no rank completed
// in its generation was abandoned and redone with the same samples in a
// later one.
func ReconcileLedgers(workers [][]LedgerEntry) []LedgerEntry {
	type key struct {
		epoch, step int
		gen         int64
	}
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
