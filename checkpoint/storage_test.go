package checkpoint

import (
	"errors"
	"io"
	"io/fs"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
)

// TestStorageContract holds every Storage implementation to the contract the
// Writer and the reader rely on.
func TestStorageContract(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		ctx := testCtx(t)

		t.Run("write read list", func(t *testing.T) {
			writeAll(t, st, "a/b/one", []byte("1"))
			writeAll(t, st, "a/b/two", []byte("22"))
			writeAll(t, st, "a/c/three", []byte("333"))
			if got := string(readAll(t, st, "a/b/two")); got != "22" {
				t.Fatalf("read %q, want 22", got)
			}
			rc, size, err := st.Open(ctx, "a/c/three")
			if err != nil || size != 3 {
				t.Fatalf("Open: size %d, err %v; want 3, nil", size, err)
			}
			rc.Close()
			names, err := st.List(ctx, "a")
			if err != nil || !reflect.DeepEqual(names, []string{"b", "c"}) {
				t.Fatalf("List(a) = %v, %v; want [b c]", names, err)
			}
			names, err = st.List(ctx, "a/b")
			if err != nil || !reflect.DeepEqual(names, []string{"one", "two"}) {
				t.Fatalf("List(a/b) = %v, %v; want [one two] (no temporary files)", names, err)
			}
			writeAll(t, st, "a/b/one", []byte("replaced"))
			if got := string(readAll(t, st, "a/b/one")); got != "replaced" {
				t.Fatalf("after replace read %q", got)
			}
		})

		t.Run("missing", func(t *testing.T) {
			if _, _, err := st.Open(ctx, "nope/x"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Open missing: %v, want fs.ErrNotExist", err)
			}
			if names, err := st.List(ctx, "nope"); err != nil || len(names) != 0 {
				t.Fatalf("List missing = %v, %v; want empty, nil", names, err)
			}
			if err := st.RemoveAll(ctx, "nope"); err != nil {
				t.Fatalf("RemoveAll missing: %v", err)
			}
		})

		t.Run("failed write leaves old content", func(t *testing.T) {
			writeAll(t, st, "f/x", []byte("old"))
			boom := errors.New("boom")
			err := st.WriteFile(ctx, "f/x", func(w io.Writer) error {
				w.Write([]byte("partial"))
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("WriteFile: %v, want boom", err)
			}
			if got := string(readAll(t, st, "f/x")); got != "old" {
				t.Fatalf("after failed write read %q, want old", got)
			}
			err = st.WriteFile(ctx, "f/y", func(w io.Writer) error { return boom })
			if !errors.Is(err, boom) {
				t.Fatal(err)
			}
			if names, _ := st.List(ctx, "f"); !reflect.DeepEqual(names, []string{"x"}) {
				t.Fatalf("List after failed writes = %v, want [x]", names)
			}
		})

		t.Run("publish", func(t *testing.T) {
			writeAll(t, st, "p/.tmp-1/m", []byte("first"))
			if err := st.Publish(ctx, "p/.tmp-1", "p/final"); err != nil {
				t.Fatal(err)
			}
			writeAll(t, st, "p/.tmp-2/m", []byte("second"))
			writeAll(t, st, "p/.tmp-2/n", []byte("new"))
			if err := st.Publish(ctx, "p/.tmp-2", "p/final"); err != nil {
				t.Fatalf("Publish over an existing tree: %v", err)
			}
			if got := string(readAll(t, st, "p/final/m")); got != "second" {
				t.Fatalf("published m = %q, want second", got)
			}
			if names, _ := st.List(ctx, "p"); !reflect.DeepEqual(names, []string{"final"}) {
				t.Fatalf("List(p) after publish = %v, want [final]", names)
			}
			if names, _ := st.List(ctx, "p/final"); !reflect.DeepEqual(names, []string{"m", "n"}) {
				t.Fatalf("List(p/final) = %v, want [m n]", names)
			}
			if err := st.Publish(ctx, "p/.tmp-missing", "p/final"); err == nil {
				t.Fatal("Publish of a missing staging tree succeeded")
			}
			if got := string(readAll(t, st, "p/final/m")); got != "second" {
				t.Fatalf("a failed Publish changed final: m = %q", got)
			}
			if err := st.RemoveAll(ctx, "p/final"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.Open(ctx, "p/final/m"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("after RemoveAll: %v", err)
			}
		})

		t.Run("create exclusive", func(t *testing.T) {
			writeAll(t, st, "x/dir/file", []byte("1"))
			if err := st.CreateExclusive(ctx, "x/dir/claim", []byte("me")); err != nil {
				t.Fatal(err)
			}
			if got := string(readAll(t, st, "x/dir/claim")); got != "me" {
				t.Fatalf("claim holds %q", got)
			}
			for _, name := range []string{"x/dir/claim", "x/dir/file", "x/dir"} {
				if err := st.CreateExclusive(ctx, name, nil); !errors.Is(err, fs.ErrExist) {
					t.Fatalf("CreateExclusive(%s) over an existing name: %v, want fs.ErrExist", name, err)
				}
			}
			if err := st.CreateExclusive(ctx, "x/gone/claim", nil); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("CreateExclusive in a missing directory: %v, want fs.ErrNotExist", err)
			}
			if names, _ := st.List(ctx, "x"); !reflect.DeepEqual(names, []string{"dir"}) {
				t.Fatalf("a refused create left %v", names)
			}
			// Of concurrent creates of one name exactly one succeeds.
			var wins atomic.Int32
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					if err := st.CreateExclusive(ctx, "x/dir/race", nil); err == nil {
						wins.Add(1)
					} else if !errors.Is(err, fs.ErrExist) {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("%d concurrent creates succeeded, want 1", wins.Load())
			}
			if err := st.CreateExclusive(ctx, "../x", nil); !errors.Is(err, ErrInvalidPath) {
				t.Fatalf("CreateExclusive(../x): %v", err)
			}
		})

		t.Run("bad names", func(t *testing.T) {
			for _, name := range []string{"", "/abs", "../up", "a/../b", "a//b", "a/", "."} {
				if err := st.WriteFile(ctx, name, func(io.Writer) error { return nil }); !errors.Is(err, ErrInvalidPath) {
					t.Errorf("WriteFile(%q): %v, want ErrInvalidPath", name, err)
				}
				if _, _, err := st.Open(ctx, name); !errors.Is(err, ErrInvalidPath) {
					t.Errorf("Open(%q): %v, want ErrInvalidPath", name, err)
				}
			}
		})
	})
}
