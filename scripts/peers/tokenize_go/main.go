// Command tokenize_go is the peer figure for `loom data prepare`: the
// least a Go program does to turn the same files into GPT-2 tokens with
// the same library (github.com/tiktoken-go/tokenizer, r50k_base). It
// reads every regular file under the given directories whose name matches
// --include (and none of --exclude), skipping files with NUL bytes, and
// encodes them on --workers goroutines, one file at a time, keeping each
// file's ids as uint16 in memory (as any program that goes on to use them
// must; a program that dropped them would spend its time in the garbage
// collector, whose pace follows the live heap) and writing nothing: its
// tokens/s bound what prepare can reach with this codec.
//
// Usage: go run ./scripts/peers/tokenize_go [--include '*.go'] [--exclude '*_test.go'] [--workers N] DIR...
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiktoken-go/tokenizer"
)

type globs []string

func (g *globs) String() string     { return strings.Join(*g, ",") }
func (g *globs) Set(v string) error { *g = append(*g, v); return nil }

func main() {
	var include, exclude globs
	flag.Var(&include, "include", "file name glob to take (repeatable)")
	flag.Var(&exclude, "exclude", "file or directory name glob to skip (repeatable)")
	workers := flag.Int("workers", runtime.GOMAXPROCS(0), "encoding goroutines")
	asJSON := flag.Bool("json", false, "print the figures as one JSON line")
	flag.Parse()
	match := func(pats []string, name string) bool {
		for _, p := range pats {
			if ok, _ := filepath.Match(p, name); ok {
				return true
			}
		}
		return false
	}
	var files []string
	for _, root := range flag.Args() {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if p != root && match(exclude, d.Name()) {
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.Type().IsRegular() && (len(include) == 0 || match(include, d.Name())) {
				files = append(files, p)
			}
			return nil
		})
	}
	sort.Strings(files)

	t0 := time.Now()
	enc, err := tokenizer.Get(tokenizer.R50kBase)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := time.Since(t0)

	start := time.Now()
	var next, docs, nbytes, tokens atomic.Int64
	kept := make([][]uint16, len(files)) // each file's ids, EOT-terminated
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(files) {
					return
				}
				b, err := os.ReadFile(files[i])
				if err != nil || len(b) == 0 || bytes.IndexByte(b, 0) >= 0 {
					continue
				}
				ids, _, err := enc.Encode(string(b))
				if err != nil {
					fmt.Fprintln(os.Stderr, files[i], err)
					os.Exit(1)
				}
				out := make([]uint16, len(ids)+1)
				for k, id := range ids {
					out[k] = uint16(id)
				}
				out[len(ids)] = 50256 // <|endoftext|> after each document
				kept[i] = out
				docs.Add(1)
				nbytes.Add(int64(len(b)))
				tokens.Add(int64(len(out)))
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	runtime.KeepAlive(kept)
	r := map[string]any{"documents": docs.Load(), "bytes": nbytes.Load(), "tokens": tokens.Load(),
		"seconds": secs, "tokens_per_s": float64(tokens.Load()) / secs, "workers": *workers,
		"codec_build_ms": float64(build.Microseconds()) / 1e3}
	if *asJSON {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%d documents, %d bytes, %d tokens in %.2fs: %.0f tokens/s on %d workers (codec built in %v)\n",
		docs.Load(), nbytes.Load(), tokens.Load(), secs, r["tokens_per_s"], *workers, build.Round(time.Microsecond))
}
