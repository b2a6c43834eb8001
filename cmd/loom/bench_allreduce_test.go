package main

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Launched ranks share the cores: GOMAXPROCS = cores/ranks (at least 1),
// unless the caller chose GOMAXPROCS, which they then inherit unchanged.
func TestRankEnvGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	os.Unsetenv("GOMAXPROCS")
	for _, ranks := range []int{1, 2, 4, 64} {
		env := rankEnv(ranks)
		want := "GOMAXPROCS=" + strconv.Itoa(max(1, runtime.NumCPU()/ranks))
		if !slices.Contains(env, want) {
			t.Fatalf("ranks=%d: environment lacks %s", ranks, want)
		}
	}
	t.Setenv("GOMAXPROCS", "3")
	env := rankEnv(4)
	n := 0
	for _, kv := range env {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			n++
			if kv != "GOMAXPROCS=3" {
				t.Fatalf("caller's GOMAXPROCS=3 replaced by %s", kv)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d GOMAXPROCS entries, want the caller's one", n)
	}
}
