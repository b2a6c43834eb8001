package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/loomtrain/loom/data"
)

func newDataCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "data", Short: "Prepare datasets: tokenise text into shards"}
	cmd.AddCommand(newDataPrepareCmd())
	return cmd
}

func newDataPrepareCmd() *cobra.Command {
	c := data.DefaultPrepareConfig()
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prepare INPUT... --out DIR",
		Short: "Tokenise text files into token shards for a GPT job (data: {dataset: tokens})",
		Long: `Tokenise text into the shards a GPT job trains on with
data: {dataset: tokens, path: DIR}.

INPUT is a file, a directory (walked recursively in sorted order; symbolic
links are not followed; empty files and files with NUL bytes, taken to be
binary, are skipped) or a glob. --include keeps only the walked files whose
name matches one of its globs, --exclude skips walked files and directories
that match one (a glob with a '/' matches the path below the walked
directory instead of the name); both may be repeated.

Documents are ordered by absolute path; every --val-every'th goes to the
validation split (with fewer documents, the last 1/N of the tokens).
Each document is followed by the end-of-text token (gpt2: 50256) or, with
--tokenizer byte, by a newline unless it ends in one: the byte tokens are
those of data: {dataset: text} on the same files. Documents are encoded on
--workers goroutines and written in order, so the output is the same for
any --workers. DIR gets dataset.json (tokenizer, vocab, shards, totals,
inputs) and train-NNNNN.tok / val-NNNNN.tok shards of at most
--shard-tokens tokens; docs/tokens.md describes the format.`,
		Example: `  # The Go standard library's source, GPT-2 tokens, tests included:
  loom data prepare $(go env GOROOT)/src --include '*.go' --out data/gosrc
  # ... without tests and test data:
  loom data prepare $(go env GOROOT)/src --include '*.go' --exclude '*_test.go' --exclude testdata --out data/gosrc
  # Byte-level tokens (vocab 256) of some text files, every 20th held out:
  loom data prepare notes/ README.md 'docs/*.md' --tokenizer byte --val-every 20 --out data/notes
  # Then train on them:  data: {dataset: tokens, path: data/gosrc}   (model.vocab >= 50257 for gpt2)`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c.Inputs = args
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			pv := newPrepareView(cmd.ErrOrStderr())
			c.Progress = pv.update
			s, err := data.Prepare(ctx, c)
			pv.done()
			if err != nil {
				return err
			}
			return printPrepareSummary(cmd.OutOrStdout(), s, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Out, "out", "", "output directory (created; an existing non-empty one needs --overwrite)")
	f.StringVar(&c.Tokenizer, "tokenizer", c.Tokenizer, "tokenizer: "+strings.Join(data.TokenizerNames, " | "))
	f.StringArrayVar(&c.Include, "include", nil, "take only walked files whose name matches this glob (repeatable), e.g. '*.go'")
	f.StringArrayVar(&c.Exclude, "exclude", nil, "skip walked files and directories matching this glob (repeatable), e.g. '*_test.go', testdata")
	f.IntVar(&c.ValEvery, "val-every", c.ValEvery, "every Nth document (by sorted path) goes to validation")
	f.IntVar(&c.ShardTokens, "shard-tokens", c.ShardTokens, "tokens per shard file")
	f.IntVar(&c.Workers, "workers", c.Workers, "documents encoded in parallel (the output does not depend on it)")
	f.BoolVar(&c.Overwrite, "overwrite", false, "replace the token dataset already in --out")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// prepareView shows Prepare's progress on w: a redrawn bar when w is a
// terminal, else a plain line every 5 seconds.
type prepareView struct {
	w     io.Writer
	tty   bool
	width int
	last  time.Time
	drawn bool
}

func newPrepareView(w io.Writer) *prepareView {
	v := &prepareView{w: w, width: 100, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		v.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 40 {
			v.width = cols
		}
	}
	return v
}

func (v *prepareView) update(p data.PrepareProgress) {
	every := 5 * time.Second
	if v.tty {
		every = 100 * time.Millisecond
	}
	if time.Since(v.last) < every && p.Files < p.TotalFiles {
		return
	}
	v.last = time.Now()
	secs := p.Elapsed.Seconds()
	rate := float64(p.Tokens) / max(secs, 1e-9)
	frac := float64(p.Bytes) / float64(max(p.TotalBytes, 1))
	eta := "?"
	if frac > 0 {
		eta = (time.Duration(secs*(1-frac)/frac) * time.Second).Round(time.Second).String()
	}
	if !v.tty {
		fmt.Fprintf(v.w, "prepare: %d/%d files, %s of %s, %s tokens, %s tokens/s, ETA %s\n",
			p.Files, p.TotalFiles, mb(p.Bytes), mb(p.TotalBytes), human(float64(p.Tokens)), human(rate), eta)
		return
	}
	info := fmt.Sprintf(" %d/%d files  %s tokens  %s tokens/s  ETA %s", p.Files, p.TotalFiles, human(float64(p.Tokens)), human(rate), eta)
	fmt.Fprintf(v.w, "\r\033[K%s%s", drawBar(frac, max(10, min(40, v.width-len(info)-4))), info)
	v.drawn = true
}

// done clears the bar.
func (v *prepareView) done() {
	if v.drawn {
		fmt.Fprint(v.w, "\r\033[K")
	}
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

func printPrepareSummary(out io.Writer, s *data.PrepareSummary, asJSON bool) error {
	m := s.Manifest
	secs := s.Elapsed.Seconds()
	tokens := m.Train.Tokens + m.Val.Tokens
	rate := float64(tokens) / max(secs, 1e-9)
	if asJSON {
		b, err := json.Marshal(map[string]any{"out": m.Dir, "tokenizer": m.Tokenizer, "vocab": m.Vocab,
			"documents": m.Documents, "train_documents": m.Train.Documents, "val_documents": m.Val.Documents,
			"skipped_files": m.Skipped, "bytes": m.Bytes, "tokens": tokens, "train_tokens": m.Train.Tokens, "val_tokens": m.Val.Tokens,
			"train_shards": len(m.Train.Shards), "val_shards": len(m.Val.Shards), "split": m.Split,
			"seconds": secs, "tokens_per_s": rate, "workers": s.Workers})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	skipped := ""
	if m.Skipped > 0 {
		skipped = fmt.Sprintf("; %s skipped (empty, binary or unreadable)", plural(m.Skipped, "file"))
	}
	fmt.Fprintf(out, "prepared %s with tokenizer %s (vocab %d)\n", m.Dir, m.Tokenizer, m.Vocab)
	fmt.Fprintf(out, "  documents  %d (%d train, %d val%s)%s\n", m.Documents, m.Train.Documents, m.Val.Documents, splitNote(m), skipped)
	fmt.Fprintf(out, "  text       %s\n", mb(m.Bytes))
	fmt.Fprintf(out, "  tokens     %d (%d train in %s, %d val in %s)\n",
		tokens, m.Train.Tokens, plural(int64(len(m.Train.Shards)), "shard"), m.Val.Tokens, plural(int64(len(m.Val.Shards)), "shard"))
	fmt.Fprintf(out, "  speed      %s tokens/s (%.1f s on %d workers)\n", human(rate), secs, s.Workers)
	fmt.Fprintf(out, "train on it with  data: {dataset: tokens, path: %s}  and model.vocab >= %d\n", m.Dir, m.Vocab)
	return nil
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func splitNote(m *data.TokenManifest) string {
	if m.Documents < int64(m.ValEvery) {
		return fmt.Sprintf(": too few documents, the last 1/%d of the tokens is validation", m.ValEvery)
	}
	return fmt.Sprintf(": every %dth", m.ValEvery)
}
