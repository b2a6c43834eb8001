package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"time"
)

// LocalStorage is a Storage rooted at a directory of the local file system
// (or a mounted network file system that honours fsync and rename).
// Temporary files are dot-files next to their final name; they are never
// listed by a Reader as checkpoints.
type LocalStorage struct {
	root string
}

// NewLocalStorage returns a LocalStorage rooted at dir, creating dir if it
// does not exist.
func NewLocalStorage(dir string) (*LocalStorage, error) {
	if dir == "" {
		return nil, fmt.Errorf("%w: empty directory", ErrInvalidPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: storage root: %w", err)
	}
	return &LocalStorage{root: dir}, nil
}

// Root is the directory the storage is rooted at.
func (s *LocalStorage) Root() string { return s.root }

func (s *LocalStorage) path(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

// WriteFile implements Storage: a temporary file in the same directory,
// written, fsynced, closed, renamed to name, and the directory fsynced.
func (s *LocalStorage) WriteFile(ctx context.Context, name string, write func(io.Writer) error) (err error) {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, p); err != nil {
		return err
	}
	return syncDir(dir)
}

// Publish implements Storage. If final exists it is first renamed aside to
// a trash name and removed after the new tree is in place; a crash in
// between leaves a trash directory that readers ignore and the next
// Writer's retention removes.
func (s *LocalStorage) Publish(ctx context.Context, staging, final string) error {
	src, err := s.path(staging)
	if err != nil {
		return err
	}
	dst, err := s.path(final)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := syncDir(src); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	trash := ""
	if _, err := os.Lstat(dst); err == nil {
		trash = filepath.Join(filepath.Dir(dst), trashPrefix+filepath.Base(dst)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err := os.Rename(dst, trash); err != nil {
			return err
		}
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	// Make the rename durable, and the parents' own entries if they were
	// just created: every directory from final's parent up to the root.
	for d := path.Dir(final); ; d = path.Dir(d) {
		p := s.root
		if d != "." {
			p = filepath.Join(s.root, filepath.FromSlash(d))
		}
		if err := syncDir(p); err != nil {
			return err
		}
		if d == "." {
			break
		}
	}
	if trash != "" {
		return os.RemoveAll(trash)
	}
	return nil
}

// List implements Storage.
func (s *LocalStorage) List(ctx context.Context, dir string) ([]string, error) {
	p, err := s.path(dir)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Name()
	}
	sort.Strings(out)
	return out, nil
}

// Open implements Storage.
func (s *LocalStorage) Open(ctx context.Context, name string) (io.ReadCloser, int64, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if fi.IsDir() {
		f.Close()
		return nil, 0, fmt.Errorf("open %s: is a directory: %w", name, fs.ErrNotExist)
	}
	return f, fi.Size(), nil
}

// RemoveAll implements Storage.
func (s *LocalStorage) RemoveAll(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return os.RemoveAll(p)
}

// CreateExclusive implements Storage: O_CREATE|O_EXCL in an existing
// directory, written, fsynced, and the directory fsynced. A failed write
// removes the file again.
func (s *LocalStorage) CreateExclusive(ctx context.Context, name string, data []byte) (err error) {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err // *PathError wrapping fs.ErrExist or fs.ErrNotExist
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(p)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(p))
}

// syncDir fsyncs a directory so that renames and creations in it survive a
// crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
