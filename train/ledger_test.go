package train

import (
	"slices"
	"testing"
)

func TestReconcileLedgers(t *testing.T) {
	done := func(step int, gen int64, s ...int) LedgerEntry { return LedgerEntry{Step: step, Gen: gen, Samples: s} }
	started := func(step int, gen int64, s ...int) LedgerEntry {
		return LedgerEntry{Step: step, Gen: gen, Tentative: true, Samples: s}
	}
	w0 := []LedgerEntry{started(1, 2, 1), done(1, 2, 1), started(2, 2, 3), done(2, 2, 3), started(3, 2, 5), started(3, 3, 5, 6), done(3, 3, 5, 6)}
	killed := []LedgerEntry{started(1, 2, 2), done(1, 2, 2), started(2, 2, 4)} // killed after its part of step 2 was sent
	stuck := []LedgerEntry{started(3, 2, 7)}                                   // step 3 of generation 2 was abandoned everywhere
	late := []LedgerEntry{started(1, 2, 0), done(1, 2, 0), done(1, 2, 0)}      // two completed entries: a real double use
	var got []int
	for _, e := range ReconcileLedgers([][]LedgerEntry{w0, killed, stuck, late}) {
		got = append(got, e.Samples...)
	}
	slices.Sort(got)
	// Sample 0 stays counted twice, for the audit to catch.
	if want := []int{0, 0, 1, 2, 3, 4, 5, 6}; !slices.Equal(got, want) {
		t.Fatalf("counted samples %v, want %v", got, want)
	}
}
