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

// Bad flags are refused, naming the flag, before any rank starts; --chunk
// auto resolves alike on every rank: 1MiB when all ranks share a host and
// shared memory, else 512KiB.
func TestAllreduceFlags(t *testing.T) {
	good := func() allreduceOpts {
		return allreduceOpts{sizes: []string{"1", "16MiB"}, compress: "none", chunk: "auto", target: "1GiB",
			trials: 1, sockBuf: "4MiB", shmRing: "4MiB", rank: -1}
	}
	for flag, bad := range map[string]func(*allreduceOpts){
		"--shm-ring": func(o *allreduceOpts) { o.shmRing = "100B" },
		"--chunk":    func(o *allreduceOpts) { o.chunk = "8B" },
		"--size":     func(o *allreduceOpts) { o.sizes = []string{"1", "x"} },
		"--compress": func(o *allreduceOpts) { o.compress = "zip" },
		"--trials":   func(o *allreduceOpts) { o.trials = 0 },
		"--sockbuf":  func(o *allreduceOpts) { o.sockBuf = "-1" },
	} {
		o := good()
		bad(&o)
		if _, err := o.parse(); err == nil || !strings.HasPrefix(err.Error(), flag) {
			t.Errorf("%s: error %v, want one naming the flag", flag, err)
		}
	}
	for _, tc := range []struct {
		shm   string
		peers []string
		want  int
	}{
		{"4MiB", nil, 1 << 20},
		{"4MiB", []string{"127.0.0.1:1", "127.0.0.1:2"}, 1 << 20},
		{"4MiB", []string{"10.0.0.1:1", "10.0.0.2:1"}, 512 << 10},
		{"0", []string{"127.0.0.1:1", "127.0.0.1:2"}, 512 << 10},
	} {
		o := good()
		o.shmRing, o.peers = tc.shm, tc.peers
		p, err := o.parse()
		if err != nil || p.chunk != tc.want {
			t.Errorf("shm-ring %s peers %v: chunk %d (%v), want %d", tc.shm, tc.peers, p.chunk, err, tc.want)
		}
	}
}
