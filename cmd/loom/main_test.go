package main

import (
	"os"
	"testing"
)

// TestMain lets multi-process tests use this test binary as the loom
// binary: `loom launch --workers N` re-executes os.Executable() as
// `loom worker`, and with LOOM_TEST_AS_CLI=1 in the environment the test
// binary runs main() instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("LOOM_TEST_AS_CLI") == "1" {
		main()
		os.Exit(0)
	}
	os.Setenv("LOOM_TEST_AS_CLI", "1")
	os.Exit(m.Run())
}
