// Command ledgercheck reconciles the sample ledgers that workers write
// with --sample-ledger and checks that every sample of a run was used
// exactly once: ledgercheck -dir DIR -samples N -steps S -batch B -seed X.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/loomtrain/loom/train"
)

func main() {
	dir := flag.String("dir", "", "directory of *.jsonl ledgers")
	samples := flag.Int("samples", 60000, "training-set size")
	steps := flag.Int("steps", 0, "steps the job ran")
	batch := flag.Int("batch", 0, "global batch")
	seed := flag.Uint64("seed", 0, "the job's seed")
	flag.Parse()
	files, _ := filepath.Glob(filepath.Join(*dir, "*.jsonl"))
	if len(files) == 0 || *steps <= 0 || *batch <= 0 {
		fmt.Fprintf(os.Stderr, "ledgercheck: need -dir with ledgers (found %d), -steps and -batch\n", len(files))
		os.Exit(2)
	}
	var all [][]train.LedgerEntry
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ledgercheck:", err)
			os.Exit(2)
		}
		var es []train.LedgerEntry
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var e train.LedgerEntry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				fmt.Fprintf(os.Stderr, "ledgercheck: %s: %v\n", f, err)
				os.Exit(2)
			}
			es = append(es, e)
		}
		fh.Close()
		all = append(all, es)
	}
	if err := train.CheckExactlyOnce(train.ReconcileLedgers(all), *samples, *steps, *batch, *seed); err != nil {
		fmt.Println("NOT exactly once:", err)
		os.Exit(1)
	}
	fmt.Printf("exactly once: %d steps of %d samples from %d ledgers\n", *steps, *batch, len(files))
}
