//go:build integ

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
)

// TestCoordinatorBinaryFailover builds the loom binary, runs a three-node
// cluster with `loom coordinator`, SIGKILLs the leader and checks with
// `loom status` that a new leader serves the job, then restarts the killed
// node. Run with: go test -tags integ -run BinaryFailover ./cmd/loom
func TestCoordinatorBinaryFailover(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "loom")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	type node struct {
		id, grpc, raft string
		cmd            *exec.Cmd
	}
	nodes := []*node{{id: "c1"}, {id: "c2"}, {id: "c3"}}
	var held []net.Listener // hold every port until all are chosen: no duplicates
	for _, n := range nodes {
		for _, a := range []*string{&n.grpc, &n.raft} {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, l)
			*a = l.Addr().String()
		}
	}
	for _, l := range held {
		_ = l.Close()
	}
	start := func(n *node, extra ...string) {
		args := append([]string{"coordinator", "--id", n.id, "--data-dir", filepath.Join(dir, n.id),
			"--grpc-addr", n.grpc, "--raft-addr", n.raft, "--log-level", "info"}, extra...)
		n.cmd = exec.Command(bin, args...)
		logf, err := os.OpenFile(filepath.Join(dir, n.id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		pr, pw, _ := os.Pipe()
		n.cmd.Stderr = pw
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(pr)
			closed := false
			for sc.Scan() {
				fmt.Fprintln(logf, sc.Text())
				if !closed && strings.Contains(sc.Text(), "serving") {
					close(ready)
					closed = true
				}
			}
		}()
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s not serving after 30s", n.id)
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.cmd != nil && n.cmd.Process != nil {
				_ = n.cmd.Process.Signal(syscall.SIGTERM)
				_ = n.cmd.Wait()
			}
		}
		if t.Failed() {
			for _, n := range nodes {
				b, _ := os.ReadFile(filepath.Join(dir, n.id+".log"))
				t.Logf("---- %s ----\n%s", n.id, b)
			}
		}
	})
	start(nodes[0], "--bootstrap")
	start(nodes[1], "--join", nodes[0].grpc)
	start(nodes[2], "--join", nodes[0].grpc)
	all := nodes[0].grpc + "," + nodes[1].grpc + "," + nodes[2].grpc

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := api.Dial([]string{all})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sub, err := api.NewCoordinatorClient(conn).SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "binary-failover", GlobalBatch: 8}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := api.NewClusterClient(conn).ClusterStatus(ctx, &api.ClusterStatusRequest{})
	if err != nil || st.LeaderId == "" {
		t.Fatalf("cluster status: %v %v", st, err)
	}
	var victim *node
	for _, n := range nodes {
		if n.id == st.LeaderId {
			victim = n
		}
	}
	_ = victim.cmd.Process.Kill()
	_ = victim.cmd.Wait()
	victim.cmd = nil
	killed := time.Now()
	var out []byte
	for {
		out, err = exec.Command(bin, "status", "--coordinator", all, "--timeout", "2s").CombinedOutput()
		if err == nil && strings.Contains(string(out), sub.Job.Id) && !strings.Contains(string(out), "leader "+victim.id+" ") &&
			strings.Contains(string(out), "leader c") {
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("loom status after killing %s: %v\n%s", victim.id, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after SIGKILL of %s, loom status answered in %v:\n%s", victim.id, time.Since(killed), out)
	start(victim) // restart from its data dir, no --bootstrap/--join
	restarted := time.Now()
	for { // it catches up from the leader within moments
		out, err = exec.Command(bin, "status", "--coordinator", victim.grpc).CombinedOutput()
		if err == nil && strings.Contains(string(out), sub.Job.Id) {
			break
		}
		if time.Since(restarted) > 20*time.Second {
			t.Fatalf("restarted node's status: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("restarted %s shows the job %v after its restart", victim.id, time.Since(restarted))
}
