package data

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// docFile is one document to read.
type docFile struct {
	path     string // as found (input joined with the walked path)
	abs      string // the order and identity of documents
	size     int64
	explicit bool // named in the inputs, not found by a walk
}

// collectDocs expands and walks the inputs, returning the documents sorted
// by absolute path (each once) and how many walked entries were skipped as
// unreadable.
func collectDocs(c PrepareConfig, outAbs string) ([]docFile, int64, error) {
	seen := map[string]bool{}
	var docs []docFile
	var skipped int64
	add := func(d docFile) {
		if !seen[d.abs] {
			seen[d.abs] = true
			docs = append(docs, d)
		}
	}
	for _, in := range c.Inputs {
		paths := []string{in}
		if _, err := os.Lstat(in); err != nil && strings.ContainsAny(in, "*?[") {
			m, gerr := filepath.Glob(in)
			if gerr != nil {
				return nil, 0, fmt.Errorf("input %s: %w", in, gerr)
			}
			if len(m) == 0 {
				return nil, 0, fmt.Errorf("input %s matches no files", in)
			}
			paths = m
		}
		for _, p := range paths {
			st, err := os.Stat(p)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil, 0, fmt.Errorf("input %s does not exist", p)
				}
				return nil, 0, fmt.Errorf("input: %w", err)
			}
			abs, err := filepath.Abs(p)
			if err != nil {
				return nil, 0, err
			}
			if !st.IsDir() {
				if !st.Mode().IsRegular() {
					return nil, 0, fmt.Errorf("input %s is not a regular file or a directory", p)
				}
				add(docFile{path: p, abs: abs, size: st.Size(), explicit: true})
				continue
			}
			n, err := walkInput(p, abs, outAbs, c.Include, c.Exclude, add)
			skipped += n
			if err != nil {
				return nil, 0, err
			}
		}
	}
	if len(docs) == 0 {
		return nil, 0, fmt.Errorf("no files to tokenise in %s%s", strings.Join(c.Inputs, " "), filterNote(c))
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].abs < docs[j].abs })
	return docs, skipped, nil
}

func filterNote(c PrepareConfig) string {
	var s []string
	if len(c.Include) > 0 {
		s = append(s, "--include "+strings.Join(c.Include, ","))
	}
	if len(c.Exclude) > 0 {
		s = append(s, "--exclude "+strings.Join(c.Exclude, ","))
	}
	if len(s) == 0 {
		return ""
	}
	return " (with " + strings.Join(s, " ") + ")"
}

// walkInput walks the directory root (abs: its absolute path), skipping the
// output directory, symbolic links and anything else that is not a regular
// file or a directory, and adds the files the filters keep.
func walkInput(root, abs, outAbs string, include, exclude []string, add func(docFile)) (int64, error) {
	var skipped int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			skipped++
			if d != nil && d.IsDir() {
				return fs.SkipDir // unreadable directory
			}
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		full := filepath.Join(abs, rel)
		if d.IsDir() {
			if full == outAbs || p != root && matchGlobs(exclude, d.Name(), rel) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || matchGlobs(exclude, d.Name(), rel) {
			return nil
		}
		if len(include) > 0 && !matchGlobs(include, d.Name(), rel) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			skipped++
			return nil
		}
		add(docFile{path: p, abs: full, size: info.Size()})
		return nil
	})
	if err != nil {
		return skipped, fmt.Errorf("input: %w", err)
	}
	return skipped, nil
}

// matchGlobs reports whether a pattern matches name, or rel (slash
// separated) for a pattern holding a '/'.
func matchGlobs(pats []string, name, rel string) bool {
	for _, p := range pats {
		s := name
		if strings.Contains(p, "/") {
			s = filepath.ToSlash(rel)
		}
		if ok, _ := filepath.Match(p, s); ok {
			return true
		}
	}
	return false
}
