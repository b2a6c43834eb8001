package train

import (
	"slices"
	"testing"

	"github.com/loomtrain/loom/data"
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

// Across epochs each epoch is ceil(n/batch) steps, its last one partial:
// the samples of 2.5 epochs pass; a missing or doubled sample fails.
func TestCheckExactlyOnceAcrossEpochs(t *testing.T) {
	const n, batch, seed = 10, 4, 3
	var es []LedgerEntry
	step := 0
	for epoch := range 3 {
		perm := data.Permutation(n, seed, epoch)
		for lo := 0; lo < n && step < 8; lo += batch {
			step++
			es = append(es, LedgerEntry{Epoch: epoch, Step: step, Samples: perm[lo:min(lo+batch, n)]})
		}
	}
	if err := CheckExactlyOnce(es, n, 8, batch, seed); err != nil {
		t.Fatalf("8 steps over 3 epochs: %v", err)
	}
	short := slices.Clone(es)
	short[4] = LedgerEntry{Epoch: 1, Step: 5, Samples: es[4].Samples[1:]}
	if err := CheckExactlyOnce(short, n, 8, batch, seed); err == nil {
		t.Fatal("a missing sample passed")
	}
	if err := CheckExactlyOnce(append(slices.Clone(es), es[2]), n, 8, batch, seed); err == nil {
		t.Fatal("a doubled sample passed")
	}
}

// A rollback to the checkpoint of step 2 in generation 4 undoes what
// generations before 4 trained after step 2 (and only that): the steps
// retrained from the checkpoint count once.
func TestReconcileRollback(t *testing.T) {
	done := func(step int, gen int64, s ...int) LedgerEntry { return LedgerEntry{Step: step, Gen: gen, Samples: s} }
	a := []LedgerEntry{done(1, 2, 1), done(2, 2, 2), done(3, 2, 3), done(4, 3, 4), {Step: 2, Gen: 4, Rollback: true}, done(3, 4, 3), done(4, 4, 4)}
	b := []LedgerEntry{done(1, 2, 11), done(2, 2, 12), done(3, 2, 13), {Step: 2, Gen: 4, Rollback: true}, done(3, 4, 13), done(4, 4, 14)}
	var got []int
	for _, e := range ReconcileLedgers([][]LedgerEntry{a, b}) {
		got = append(got, e.Samples...)
	}
	slices.Sort(got)
	if want := []int{1, 2, 3, 4, 11, 12, 13, 14}; !slices.Equal(got, want) {
		t.Fatalf("counted samples %v, want %v", got, want)
	}
}
