package collective

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Multi-process tests: the test binary re-execs itself as rank processes
// (TestMain sees childEnv and runs childMain instead of the tests). Each
// child gets its pre-bound listener as fd 3, so no port is raced for.
const (
	childEnv   = "LOOM_COLLECTIVE_TEST_CHILD"
	childRank  = "LOOM_COLLECTIVE_TEST_RANK"
	childPeers = "LOOM_COLLECTIVE_TEST_PEERS"
	childShm   = "LOOM_COLLECTIVE_TEST_SHM" // "1": payloads through shared memory
)

// TestMain doubles as the entry point of child rank processes: the
// multi-process tests re-exec this test binary with childEnv set.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}

// childMain runs one rank: all-reduce 4 MiB in a loop until an operation
// fails, printing "ready" after the first success and "error <msg>" at the
// end. The deadline is far away, so only a peer failure can end the loop.
func childMain() int {
	rank, _ := strconv.Atoi(os.Getenv(childRank))
	peers := strings.Split(os.Getenv(childPeers), ",")
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Println("error listener:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tcfg := DefaultTCPConfig()
	tcfg.Generation, tcfg.Rank, tcfg.Peers, tcfg.Listener = 3, rank, peers, ln
	wantShm := 0
	if os.Getenv(childShm) == "1" {
		wantShm = len(peers) - 1
	} else {
		tcfg.ShmRingBytes = 0
	}
	tr, err := NewTCPTransport(ctx, tcfg)
	if err != nil {
		fmt.Println("error setup:", err)
		return 2
	}
	if got := tr.SharedMemoryLinks(); got != wantShm {
		fmt.Printf("error setup: %d shared-memory links, want %d\n", got, wantShm)
		return 2
	}
	cfg := DefaultConfig()
	cfg.Generation, cfg.Rank = 3, rank
	c, err := New(tr, cfg)
	if err != nil {
		fmt.Println("error setup:", err)
		return 2
	}
	defer c.Close()
	buf := make([]float32, 1<<20)
	for i := 0; ; i++ {
		if err := c.AllReduce(ctx, F32(buf)); err != nil {
			fmt.Println("error", err)
			return 3
		}
		if i == 0 {
			fmt.Println("ready")
		}
	}
}

// killModes are the link kinds the kill test runs over: TCP, and on Linux
// (shm_test.go) shared memory.
var killModes = []bool{false}

type childLine struct {
	rank int
	text string
	at   time.Time
}

func TestKillRankProcessMidAllReduce(t *testing.T) {
	for _, shm := range killModes {
		t.Run(map[bool]string{false: "tcp", true: "shm"}[shm], func(t *testing.T) { testKillRank(t, shm) })
	}
}

func testKillRank(t *testing.T, shm bool) {
	const n, victim = 4, 2
	lns, addrs, err := LoopbackListeners(n)
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan childLine, 64)
	cmds := make([]*exec.Cmd, n)
	done := make(chan struct{}, n)
	t.Cleanup(func() {
		for _, c := range cmds {
			if c != nil && c.Process != nil {
				_ = c.Process.Kill()
			}
		}
		for _, c := range cmds {
			if c != nil {
				<-done
			}
		}
	})
	for r := range n {
		f, err := lns[r].(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=1", childRank+"="+strconv.Itoa(r), childPeers+"="+strings.Join(addrs, ","),
			childShm+"="+map[bool]string{false: "0", true: "1"}[shm])
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[r] = cmd
		_ = f.Close()
		_ = lns[r].Close()
		go func() {
			s := bufio.NewScanner(out)
			for s.Scan() {
				lines <- childLine{rank: r, text: s.Text(), at: time.Now()}
			}
			_ = cmd.Wait()
			done <- struct{}{}
		}()
	}
	next := func(timeout time.Duration) childLine {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(timeout):
			t.Fatalf("no output from rank processes within %v", timeout)
		}
		return childLine{}
	}
	for ready := 0; ready < n; {
		l := next(30 * time.Second)
		if l.text != "ready" {
			t.Fatalf("rank %d: %s", l.rank, l.text)
		}
		ready++
	}
	time.Sleep(200 * time.Millisecond) // ranks are now looping all-reduces
	if err := cmds[victim].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for seen := map[int]bool{}; len(seen) < n-1; {
		l := next(5 * time.Second)
		if !strings.HasPrefix(l.text, "error") {
			t.Fatalf("rank %d: unexpected %q", l.rank, l.text)
		}
		d := l.at.Sub(killed)
		t.Logf("rank %d failed %v after the kill: %s", l.rank, d.Round(time.Millisecond), l.text)
		if d > 2*time.Second {
			t.Fatalf("rank %d took %v (> 2s) to fail", l.rank, d)
		}
		seen[l.rank] = true
	}
	// Shared-memory files are unlinked as soon as both ends have mapped
	// them, so not even the killed process leaves one behind.
	for _, c := range cmds {
		if left, _ := filepath.Glob(filepath.Join(shmDir, fmt.Sprintf("%s%d-*", shmPrefix, c.Process.Pid))); len(left) > 0 {
			t.Errorf("left in %s: %v", shmDir, left)
		}
	}
}
