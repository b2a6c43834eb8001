package checkpoint

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest/observer"
)

// corruptSetup publishes steps 10 and 20 of job "j" and returns the storage's
// writer closed, so each case damages step 20 and checks that Latest names
// it and falls back to step 10.
func corruptSetup(t *testing.T, st Storage) (older *State) {
	t.Helper()
	w := newTestWriter(t, st, 0, nil)
	older = testState("j", 10)
	saveSync(t, w, older)
	saveSync(t, w, testState("j", 20))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return older
}

// requireFallback checks that Load of the damaged step fails with want,
// that Latest warns naming it and returns step 10, and that List marks it
// (when the damage is visible in the manifest).
func requireFallback(t *testing.T, st Storage, older *State, damaged string, want error, mention string) {
	t.Helper()
	_, err := Load(testCtx(t), st, damaged)
	if !errors.Is(err, want) {
		t.Fatalf("Load(%s): %v, want %v", damaged, err, want)
	}
	if !strings.Contains(err.Error(), damaged) || !strings.Contains(err.Error(), mention) {
		t.Fatalf("Load error %q does not name %q and %q", err, damaged, mention)
	}
	log, logs := observed()
	got, info, err := Latest(testCtx(t), st, "j", nil, log)
	if err != nil {
		t.Fatalf("Latest: %v", err)
	}
	if info.Step != 10 {
		t.Fatalf("Latest fell back to step %d, want 10", info.Step)
	}
	requireEqualState(t, older, got)
	if !warned(logs, damaged) {
		t.Fatalf("no warning names %s; logs: %v", damaged, logs.All())
	}
}

// warned reports whether some warning names path in a field.
func warned(logs *observer.ObservedLogs, path string) bool {
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.String == path || (f.Interface != nil && strings.Contains(errString(f.Interface), path)) {
				return true
			}
		}
		if strings.Contains(e.Message, path) {
			return true
		}
	}
	return false
}

func errString(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return ""
}

func TestCorruptFlippedByte(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		name := "j/step-00000020/" + OptimizerFile
		b := readAll(t, st, name)
		b[len(b)-5] ^= 0x01 // inside the last tensor's data
		writeAll(t, st, name, b)
		requireFallback(t, st, older, "j/step-00000020", ErrCorrupt, "sha256")
	})
}

func TestCorruptFlippedHeaderByte(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		name := "j/step-00000020/" + ModelFile
		b := readAll(t, st, name)
		i := strings.Index(string(b), `"l0.b"`)
		b[i+2] = 'X' // rename a tensor in the header
		writeAll(t, st, name, b)
		requireFallback(t, st, older, "j/step-00000020", ErrCorrupt, "not in the file header")
	})
}

func TestCorruptTruncated(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		name := "j/step-00000020/" + ModelFile
		b := readAll(t, st, name)
		writeAll(t, st, name, b[:len(b)-3])
		requireFallback(t, st, older, "j/step-00000020", ErrCorrupt, "truncated")
	})
}

func TestCorruptMissingManifest(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		if err := st.RemoveAll(testCtx(t), "j/step-00000020/"+ManifestFile); err != nil {
			t.Fatal(err)
		}
		requireFallback(t, st, older, "j/step-00000020", ErrIncomplete, "no manifest")
		list, err := List(testCtx(t), st, "j")
		if err != nil || len(list) != 2 || list[1].Path != "j/step-00000020" || !strings.Contains(list[1].Problem, "no manifest") || list[0].Problem != "" {
			t.Fatalf("List = %+v, %v; want step 20 marked incomplete", list, err)
		}
	})
}

func TestCorruptMissingTensorFile(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		if err := st.RemoveAll(testCtx(t), "j/step-00000020/"+OptimizerFile); err != nil {
			t.Fatal(err)
		}
		requireFallback(t, st, older, "j/step-00000020", ErrCorrupt, "missing")
	})
}

func TestCorruptManifestEdited(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		name := "j/step-00000020/" + ManifestFile
		var m Manifest
		if err := json.Unmarshal(readAll(t, st, name), &m); err != nil {
			t.Fatal(err)
		}
		m.FormatVersion = 99
		b, _ := json.Marshal(m)
		writeAll(t, st, name, b)
		requireFallback(t, st, older, "j/step-00000020", ErrVersion, "format_version 99")

		writeAll(t, st, name, []byte(`{"format_version": 1, "job": `))
		requireFallback(t, st, older, "j/step-00000020", ErrCorrupt, "manifest")
	})
}

// TestLeftoverTempDir: a crashed write leaves a staging directory with
// tensor files (and even a manifest) but never published; Latest names it
// in a warning and uses the newest published checkpoint; the next Writer's
// retention removes it.
func TestLeftoverTempDir(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		older := corruptSetup(t, st)
		if err := st.RemoveAll(testCtx(t), "j/step-00000020"); err != nil {
			t.Fatal(err)
		}
		tmp := "j/" + tmpPrefix + "step-00000030-crashed"
		writeAll(t, st, tmp+"/"+ModelFile, []byte("half a file"))
		writeAll(t, st, tmp+"/"+ManifestFile, []byte("{}"))

		log, logs := observed()
		got, info, err := Latest(testCtx(t), st, "j", nil, log)
		if err != nil || info.Step != 10 {
			t.Fatalf("Latest = %+v, %v; want step 10", info, err)
		}
		requireEqualState(t, older, got)
		if !warned(logs, tmp) {
			t.Fatalf("no warning names %s; logs: %v", tmp, logs.All())
		}
		if list, _ := List(testCtx(t), st, "j"); len(list) != 1 || list[0].Step != 10 {
			t.Fatalf("List shows %+v, want only step 10", list)
		}

		w := newTestWriter(t, st, 0, nil)
		saveSync(t, w, testState("j", 40))
		names, _ := st.List(testCtx(t), "j")
		if strings.Join(names, ",") != "step-00000010,step-00000040" {
			t.Fatalf("after the next save the job holds %v; want the leftover removed", names)
		}
	})
}

// TestNoValidCheckpoint: when every checkpoint is damaged the error wraps
// ErrNoCheckpoint and the causes, and names every path tried.
func TestNoValidCheckpoint(t *testing.T) {
	forEachStorage(t, func(t *testing.T, st Storage) {
		corruptSetup(t, st)
		if err := st.RemoveAll(testCtx(t), "j/step-00000020/"+ManifestFile); err != nil {
			t.Fatal(err)
		}
		name := "j/step-00000010/" + ModelFile
		b := readAll(t, st, name)
		writeAll(t, st, name, b[:100])
		writeAll(t, st, "j/.tmp-step-00000030-x/"+ModelFile, []byte("x"))

		_, _, err := Latest(testCtx(t), st, "j", nil, nil)
		if !errors.Is(err, ErrNoCheckpoint) || !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrIncomplete) {
			t.Fatalf("Latest: %v; want ErrNoCheckpoint wrapping ErrCorrupt and ErrIncomplete", err)
		}
		for _, p := range []string{"j/step-00000020", "j/step-00000010", "j/.tmp-step-00000030-x"} {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name %s", err, p)
			}
		}
	})
}

func TestLoadBadPath(t *testing.T) {
	st := NewMemStorage()
	for _, p := range []string{"", "j", "j/step-1", "j/.tmp-step-00000001-x", "../j/step-00000001", "j/step-00000001/x"} {
		if _, err := Load(testCtx(t), st, p); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("Load(%q): %v, want ErrInvalidPath", p, err)
		}
	}
	if _, err := Load(testCtx(t), st, "j/step-00000001"); !errors.Is(err, ErrIncomplete) {
		t.Errorf("Load of a missing checkpoint: %v, want ErrIncomplete", err)
	}
}
