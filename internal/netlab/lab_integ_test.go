//go:build integ

package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests change the machine's network state and need root: run them
// as root with go test -tags integ ./internal/netlab. Without root they
// fail with New's error.

// helperEnv makes the test binary a helper program on a host: "echo ADDR"
// serves lines back on ADDR, "dial ADDR" sends one line and exits 0 when it
// comes back within a second.
const helperEnv = "NETLAB_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode, addr, ok := strings.Cut(os.Getenv(helperEnv), " "); ok {
		if err := helper(mode, addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helper(mode, addr string) error {
	switch mode {
	case "echo":
		return serveEach(addr, func(c net.Conn) {
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintln(c, sc.Text())
			}
		})
	case "dial":
		return ping(addr, time.Second)
	case "sink": // reads each connection to its end, then writes the count
		return serveEach(addr, func(c net.Conn) {
			n, _ := io.Copy(io.Discard, c)
			fmt.Fprintln(c, n)
		})
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

// serveEach listens on addr, prints "listening", and runs handle on each
// connection in a goroutine of its own, closing it after.
func serveEach(addr string, handle func(net.Conn)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// ping connects to addr, sends a line and waits for it to come back, all
// within d.
func ping(addr string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, d)
}

// echo sends a line on c and waits at most d for it to come back.
func echo(c net.Conn, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprintln(c, "ping"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo: got %q", line)
	}
	return nil
}

// helperCmd returns the test binary as a helper on h.
func helperCmd(t *testing.T, h *Host, mode, addr string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(t.Context(), exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode+" "+addr)
	return cmd
}

// dialFrom runs the dial helper on h against addr and returns its error.
func dialFrom(t *testing.T, h *Host, addr string) error {
	t.Helper()
	out, err := helperCmd(t, h, "dial", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// eventually retries f for up to 5 s (a restored link takes moments: ARP,
// TCP retransmission).
func eventually(f func() error) error {
	var err error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err = f(); err == nil {
			return nil
		}
	}
	return err
}

// present lists the lab's namespaces and caller-side links still on the
// machine.
func present(t *testing.T, prefix string) []string {
	t.Helper()
	var left []string
	for _, args := range [][]string{{"netns", "list"}, {"-o", "link", "show"}} {
		out, err := ipCmd(context.Background(), args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(out) {
			name, _, _ := strings.Cut(strings.TrimSuffix(f, ":"), "@")
			if name == prefix || strings.HasPrefix(name, prefix+"-") || name == prefix+"c" {
				left = append(left, name)
			}
		}
	}
	return left
}

// Two hosts reach each other and the caller; a cut link stops both new
// and established connections, and restoring it brings them back (the
// established one resumes); a frozen host accepts connections (its kernel
// runs) but answers nothing until thawed; Close kills the host's processes
// and leaves no namespace or link behind.
func TestLab(t *testing.T) {
	lab, err := New(t.Context(), "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	a, b := lab.Host("a"), lab.Host("b")
	if a == nil || b == nil || a.IP == b.IP || len(lab.Hosts()) != 2 {
		t.Fatalf("hosts %+v", lab.Hosts())
	}
	srv := helperCmd(t, a, "echo", a.IP+":7000")
	out, _ := srv.StdoutPipe()
	var stderr strings.Builder
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "listening\n" {
		t.Fatalf("echo server on %s: %q %v\n%s", a.NS, line, err, stderr.String())
	}
	addr := a.IP + ":7000"
	if err := dialFrom(t, b, addr); err != nil {
		t.Fatalf("b -> a: %v", err)
	}
	if err := ping(addr, time.Second); err != nil {
		t.Fatalf("caller -> a: %v", err)
	}
	ln, err := net.Listen("tcp", lab.ControllerIP()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, sc.Text())
				}
				c.Close()
			}()
		}
	}()
	if err := dialFrom(t, b, ln.Addr().String()); err != nil {
		t.Fatalf("b -> caller: %v", err)
	}
	ps, err := a.Pids()
	if err != nil || len(ps) != 1 || ps[0] != srv.Process.Pid {
		t.Fatalf("pids on a: %v %v; want the server's %d alone", ps, err, srv.Process.Pid)
	}
	if ps, err := b.Pids(); err != nil || len(ps) != 0 {
		t.Fatalf("pids on b: %v %v; want none", ps, err)
	}

	held, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echo(held, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(t, b, addr); err == nil {
		t.Fatal("b reached a through a cut link")
	} else {
		t.Logf("b -> a, cut: %v", err)
	}
	if err := ping(addr, time.Second); err == nil {
		t.Fatal("the caller reached a through a cut link")
	}
	if err := echo(held, 500*time.Millisecond); !isTimeout(err) {
		t.Fatalf("an established connection through a cut link: %v; want a timeout", err)
	}
	if err := a.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := eventually(func() error { return dialFrom(t, b, addr) }); err != nil {
		t.Fatalf("b -> a after Restore: %v", err)
	}
	// The held connection's unanswered ping is retransmitted and answered.
	_ = held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("the established connection after Restore: %q %v", line, err)
	}

	if err := a.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("connect to a frozen host: %v; its kernel should accept", err)
	}
	defer frozen.Close()
	if err := echo(frozen, 500*time.Millisecond); !isTimeout(err) {
		t.Fatalf("a frozen host answered: %v", err)
	}
	if err := a.Thaw(); err != nil {
		t.Fatal(err)
	}
	_ = frozen.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(frozen).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("after Thaw: %q %v", line, err)
	}

	if err := a.Freeze(); err != nil { // Close kills frozen processes too
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the echo server outlived Close")
	}
	if left := present(t, lab.prefix); len(left) > 0 {
		t.Fatalf("left behind after Close: %v", left)
	}
	if err := lab.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A New that fails half way (here: the second host's namespace exists
// already) removes everything it had created and reports what failed.
func TestNewCleansUpAfterFailure(t *testing.T) {
	if err := preflight(); err != nil {
		t.Fatal(err)
	}
	next := "nl" + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + strconv.FormatUint((labSeq.Load()+1)%1296, 36)
	if _, err := ipCmd(t.Context(), "netns", "add", next+"-b"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ipCmd(context.Background(), "netns", "del", next+"-b") })
	lab, err := New(t.Context(), "a", "b", "c")
	if err == nil {
		lab.Close()
		t.Fatal("New succeeded over an existing namespace")
	}
	if !strings.Contains(err.Error(), "netns add "+next+"-b") {
		t.Fatalf("error %q does not name the failed step", err)
	}
	left := present(t, next)
	if len(left) != 1 || left[0] != next+"-b" {
		t.Fatalf("after a failed New: %v left; want only the namespace made before it", left)
	}
	if _, err := New(t.Context(), "a", "a"); err == nil || !strings.Contains(err.Error(), "each name once") {
		t.Fatalf("duplicate names: %v", err)
	}
}

// startHelper starts a listening helper (echo or sink) on h at addr and
// waits until it listens.
func startHelper(t *testing.T, h *Host, mode, addr string) {
	t.Helper()
	srv := helperCmd(t, h, mode, addr)
	out, _ := srv.StdoutPipe()
	var stderr strings.Builder
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "listening\n" {
		t.Fatalf("%s helper on %s: %q %v\n%s", mode, h.NS, line, err, stderr.String())
	}
}

// send writes n bytes to addr, half-closes, and waits for the sink's
// count; it returns how long that took.
func send(t *testing.T, addr string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != strconv.Itoa(n) {
		t.Fatalf("sink counted %q (%v), want %d", line, err, n)
	}
	return time.Since(start)
}

// A shaped link carries no more than its rate (the bound here is loose:
// the point is that tbf limits it, not how exactly), Shape(0) lifts the
// limit, and a relay adds its delay each way.
func TestShapeAndRelay(t *testing.T) {
	lab, err := New(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	a := lab.Host("a")
	sink, echoAddr := a.IP+":7001", a.IP+":7002"
	startHelper(t, a, "sink", sink)
	startHelper(t, a, "echo", echoAddr)
	const rate, n = 20_000_000, 4 << 20 // 20 Mbit/s, 4 MiB: 1.68 s
	want := time.Duration(float64(n*8) / rate * float64(time.Second))
	if err := a.Shape(rate); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{a.NS, lab.prefix} {
		out, err := tcCmd(t.Context(), ns, "qdisc", "show")
		if err != nil || !strings.Contains(out, "tbf") {
			t.Fatalf("tc qdisc show in %s: %v\n%s", ns, err, out)
		}
	}
	if took := send(t, sink, n); took < want*8/10 || took > 3*want {
		t.Errorf("%d bytes over a %d bit/s link took %v, want about %v", n, rate, took, want)
	}
	if err := a.Shape(0); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{a.NS, lab.prefix} {
		if out, _ := tcCmd(t.Context(), ns, "qdisc", "show"); strings.Contains(out, "tbf") {
			t.Fatalf("Shape(0) left a tbf qdisc in %s:\n%s", ns, out)
		}
	}
	const delay = 40 * time.Millisecond
	r, err := lab.Relay(echoAddr, delay)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	if err := ping(r.Addr(), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*delay {
		t.Errorf("round trip through a %v relay took %v, want at least %v", delay, rtt, 2*delay)
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}
