package collective

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain doubles as the entry point of child rank processes: the
// multi-process tests re-exec this test binary with childEnv set.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}

var kinds = []TransportKind{TransportMem, TransportTCP}

// forEachKind runs f as a subtest per transport kind: one suite, every
// implementation.
func forEachKind(t *testing.T, f func(t *testing.T, kind TransportKind)) {
	for _, k := range kinds {
		t.Run(string(k), func(t *testing.T) { f(t, k) })
	}
}

// mustAll fails the test unless every rank's error is nil.
func mustAll(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}
