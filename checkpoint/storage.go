package checkpoint

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
)

// Storage is what checkpoints are kept in: a local directory (LocalStorage),
// memory (MemStorage, for tests), or an object store. Names are clean
// relative slash-separated paths ("job/step-00000050/manifest.json"); a
// "directory" is a name prefix. Implementations are safe for concurrent use.
//
// The contract is shaped so that an object store (S3, GCS) can implement it
// without directories or rename: WriteFile is one PUT, List is a delimited
// prefix listing, and Publish copies objects with manifest.json last, so that
// until it completes readers see either no manifest (torn, skipped) or a
// manifest whose checksums fail (skipped); never a wrong tensor.
type Storage interface {
	// WriteFile creates or replaces name with the bytes write produces.
	// When it returns nil, name holds exactly those bytes and is durable
	// (local disk: temporary file, fsync, rename, fsync of the directory).
	// If it fails, name is unchanged (absent, or its old content).
	// Parent directories are created as needed.
	WriteFile(ctx context.Context, name string, write func(io.Writer) error) error

	// Publish makes the tree under staging visible under final and removes
	// staging. A tree already at final is replaced. On a local disk it is
	// one rename followed by an fsync of final's parents, so readers see
	// the old tree or the new one, never a mix.
	Publish(ctx context.Context, staging, final string) error

	// List returns the names (last segment only) of the files and
	// directories directly under dir, sorted. A missing dir is an empty
	// list, not an error.
	List(ctx context.Context, dir string) ([]string, error)

	// Open opens name for reading and returns its size. A missing name
	// returns an error for which errors.Is(err, fs.ErrNotExist) holds.
	Open(ctx context.Context, name string) (io.ReadCloser, int64, error)

	// RemoveAll removes name and everything under it. A missing name is
	// not an error.
	RemoveAll(ctx context.Context, name string) error

	// CreateExclusive creates name holding data, durably, only if name
	// does not exist and its parent directory does (it creates no
	// parents). If name exists the error wraps fs.ErrExist; if the
	// parent does not, fs.ErrNotExist. Of concurrent calls for one name,
	// from any process, at most one succeeds: the shards of a checkpoint
	// elect the one that publishes it so. (Local disk: O_CREATE|O_EXCL;
	// an object store: a conditional PUT, If-None-Match: *, after
	// checking that the staging prefix still holds objects.)
	CreateExclusive(ctx context.Context, name string, data []byte) error
}

// checkName reports whether name is a clean relative slash path.
func checkName(name string) error {
	if name == "" || name == "." || strings.HasPrefix(name, "/") || path.Clean(name) != name ||
		name == ".." || strings.HasPrefix(name, "../") || strings.Contains(name, "\\") {
		return fmt.Errorf("%w: %q", ErrInvalidPath, name)
	}
	return nil
}

// MemStorage is a Storage in memory, for tests and for the embedded
// single-process mode. Every operation is atomic (one mutex); Open returns a
// reader over a snapshot, so later writes do not change what it reads.
type MemStorage struct {
	mu    sync.Mutex
	files map[string][]byte // name -> content; never mutated in place
}

// NewMemStorage returns an empty MemStorage.
func NewMemStorage() *MemStorage {
	return &MemStorage{files: make(map[string][]byte)}
}

// WriteFile implements Storage.
func (m *MemStorage) WriteFile(ctx context.Context, name string, write func(io.Writer) error) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[name] = buf.Bytes()
	return nil
}

// Publish implements Storage.
func (m *MemStorage) Publish(ctx context.Context, staging, final string) error {
	if err := checkName(staging); err != nil {
		return err
	}
	if err := checkName(final); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var moving []string
	for name := range m.files {
		if strings.HasPrefix(name, staging+"/") {
			moving = append(moving, name)
		}
	}
	if len(moving) == 0 {
		return fmt.Errorf("publish %s: %w", staging, fs.ErrNotExist)
	}
	for name := range m.files {
		if strings.HasPrefix(name, final+"/") {
			delete(m.files, name)
		}
	}
	for _, name := range moving {
		m.files[final+name[len(staging):]] = m.files[name]
		delete(m.files, name)
	}
	return nil
}

// List implements Storage.
func (m *MemStorage) List(ctx context.Context, dir string) ([]string, error) {
	if err := checkName(dir); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := make(map[string]bool)
	for name := range m.files {
		if rest, ok := strings.CutPrefix(name, dir+"/"); ok {
			child, _, _ := strings.Cut(rest, "/")
			seen[child] = true
		}
	}
	out := make([]string, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Strings(out)
	return out, nil
}

// Open implements Storage.
func (m *MemStorage) Open(ctx context.Context, name string) (io.ReadCloser, int64, error) {
	if err := checkName(name); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	data, ok := m.files[name]
	m.mu.Unlock()
	if !ok {
		return nil, 0, fmt.Errorf("open %s: %w", name, fs.ErrNotExist)
	}
	return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
}

// RemoveAll implements Storage.
func (m *MemStorage) RemoveAll(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.files {
		if n == name || strings.HasPrefix(n, name+"/") {
			delete(m.files, n)
		}
	}
	return nil
}

// CreateExclusive implements Storage. A parent "directory" exists while
// some file lies under it.
func (m *MemStorage) CreateExclusive(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	parent := path.Dir(name)
	parentExists := parent == "."
	for n := range m.files {
		if n == name || strings.HasPrefix(n, name+"/") {
			return fmt.Errorf("create %s: %w", name, fs.ErrExist)
		}
		parentExists = parentExists || strings.HasPrefix(n, parent+"/")
	}
	if !parentExists {
		return fmt.Errorf("create %s: %w", name, fs.ErrNotExist)
	}
	m.files[name] = append([]byte(nil), data...)
	return nil
}
