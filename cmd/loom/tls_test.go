package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/pki"
	"github.com/loomtrain/loom/metrics"
	"github.com/loomtrain/loom/worker"
)

// certFlags are the --tls-* flags of certificate NAME in dir.
func certFlags(dir, name string) []string {
	return []string{"--tls-ca", filepath.Join(dir, "ca.crt"), "--tls-cert", filepath.Join(dir, name+".crt"), "--tls-key", filepath.Join(dir, name+".key")}
}

func mustLoom(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runLoom(t, args...)
	if err != nil {
		t.Fatalf("loom %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestCertsCommands: init and issue write what show reads back; bad input
// is refused with a reason.
func TestCertsCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	mustLoom(t, "certs", "init", "--dir", dir)
	mustLoom(t, "certs", "issue", "coordinator", "c1", "--dir", dir, "--host", "c1.loom,10.1.2.3")
	mustLoom(t, "certs", "issue", "worker", "w1", "--dir", dir, "--days", "30")
	out := mustLoom(t, "certs", "show", filepath.Join(dir, "c1.crt"), filepath.Join(dir, "w1.crt"), filepath.Join(dir, "ca.crt"), "--ca", filepath.Join(dir, "ca.crt"))
	for _, want := range []string{"role:     coordinator", "name:     c1", "hosts:    c1.loom, 10.1.2.3", "role:     worker", "expires in 29 days", "CA:       loom cluster CA", "CA check: ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("certs show lacks %q:\n%s", want, out)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key: %v %v", st.Mode(), err)
	}
	other := filepath.Join(t.TempDir(), "other")
	mustLoom(t, "certs", "init", "--dir", other)
	mustLoom(t, "certs", "issue", "admin", "eve", "--dir", other)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "init", "--dir", dir}, "exists (give --overwrite"},
		{[]string{"certs", "issue", "operator", "x", "--dir", dir}, `unknown role "operator"`},
		{[]string{"certs", "issue", "worker", "../x", "--dir", dir}, "only letters, digits"},
		{[]string{"certs", "issue", "worker", "w2", "--dir", t.TempDir()}, "make one with loom certs init"},
		{[]string{"certs", "issue", "worker", "w2", "--dir", dir, "--days", "0"}, "must be positive"},
		{[]string{"certs", "issue", "worker", "w2", "--dir", dir, "--ca-key", filepath.Join(other, "ca.key")}, "does not belong"},
		{[]string{"certs", "show", filepath.Join(other, "eve.crt"), "--ca", filepath.Join(dir, "ca.crt")}, "1 of 1 certificates are not usable"},
		{[]string{"certs", "show", filepath.Join(dir, "w1.key")}, "no PEM CERTIFICATE"},
		// TLS flags where nothing would use them.
		{[]string{"launch", "../../examples/mnist-mlp.yaml", "--tls-ca", filepath.Join(dir, "ca.crt")}, "are for submitting to a cluster"},
		{[]string{"bench", "allreduce", "--tls-ca", filepath.Join(dir, "ca.crt")}, "are for one rank (--rank)"},
		{[]string{"bench", "allreduce", "--rank", "0", "--peers", "127.0.0.1:1", "--tls"}, "with --rank give this rank's worker certificate"},
	} {
		if out, err := runLoom(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("loom %s: %v, want %q\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}
}

// TestTLSTrainsEndToEnd: with certificates from loom certs, an admin
// submits through the CLI, two workers train over a ring of mutual TLS (the
// all-reduce metrics say so) until the job completes, and loom status shows
// it; a worker's certificate may not read the cluster's status, and
// mismatched or partial TLS flags are refused before anything connects.
func TestTLSTrainsEndToEnd(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	mustLoom(t, "certs", "init", "--dir", certs)
	for _, c := range [][2]string{{"coordinator", "c1"}, {"worker", "w0"}, {"worker", "w1"}, {"admin", "alice"}} {
		mustLoom(t, "certs", "issue", c[0], c[1], "--dir", certs)
	}
	load := func(name string) *pki.Identity {
		f := certFlags(certs, name)
		id, err := pki.Load(pki.Files{CA: f[1], Cert: f[3], Key: f[5]})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	srv := coordinator.NewTestServer(t, func(c *coordinator.Config) { c.TLS = load("c1") })
	dir := t.TempDir()
	jobFile := writeJob(t, fmt.Sprintf(metricsJobYAML, "secure", 6, filepath.Join(dir, "ckpt")))
	jobID := strings.TrimSpace(mustLoom(t, append([]string{"launch", jobFile, "--coordinator", srv.Addr(), "--detach"}, certFlags(certs, "alice")...)...))

	// Refused before connecting.
	for _, c := range []struct {
		args []string
		want string
	}{
		{append([]string{"worker", "--coordinator", srv.Addr(), "--job", jobID}, certFlags(certs, "alice")...), "is a admin certificate (alice); this needs a worker certificate"},
		{[]string{"worker", "--coordinator", srv.Addr(), "--job", jobID, "--tls-cert", filepath.Join(certs, "w0.crt")}, "--tls-ca and --tls-key missing"},
		{append([]string{"coordinator", "--id", "c2", "--data-dir", t.TempDir(), "--bootstrap"}, certFlags(certs, "w0")...), "this needs a coordinator certificate"},
	} {
		if out, err := runLoom(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("loom %s: %v, want %q\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ids := []string{"w0", "w1"}
	urls := runAgents(ctx, t, srv.Addr(), jobID, ids, func(cfg *worker.AgentConfig) {
		cfg.TLS = load(cfg.ID)
		cfg.ShmRingBytes = 0 // the ring's gradients cross TLS, not shared memory
	})
	for i, url := range urls {
		s, err := metrics.Scrape(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := s.Value("loom_collective_allreduce_bytes_total", "worker", ids[i], "transport", "tls"); err != nil || v <= 0 {
			t.Errorf("%s: all-reduce bytes over TLS %v (%v)", ids[i], v, err)
		}
	}
	out := mustLoom(t, append([]string{"status", "--coordinator", srv.Addr()}, certFlags(certs, "alice")...)...)
	if !strings.Contains(out, jobID) || !strings.Contains(out, "completed") {
		t.Fatalf("status:\n%s", out)
	}
	if out, err := runLoom(t, append([]string{"status", "--coordinator", srv.Addr()}, certFlags(certs, "w0")...)...); err == nil || !strings.Contains(err.Error(), "a worker certificate (w0) may not call") {
		t.Fatalf("status with a worker certificate: %v\n%s", err, out)
	}
	if out, err := runLoom(t, "status", "--coordinator", srv.Addr(), "--timeout", "2s"); err == nil || !strings.Contains(err.Error(), "give --tls-ca, --tls-cert and --tls-key") {
		t.Fatalf("status in plain text: %v\n%s", err, out)
	}
}

// diagnoseTLS turns an unreachable cluster into the reason when the
// reason is TLS: a coordinator that refuses this certificate says so in a
// bare handshake, which gRPC's own error may hide behind "broken pipe".
func TestDiagnoseTLS(t *testing.T) {
	ca := pki.NewTestCA(t)
	srv := coordinator.NewTestServer(t, func(c *coordinator.Config) { c.TLS = ca.Identity(t, pki.RoleCoordinator, "c1") })
	other := pki.NewTestCA(t)
	stranger := other.IssueFor(t, pki.IssueOptions{Role: pki.RoleWorker, Name: "evil", Validity: time.Hour})
	bundle := filepath.Join(t.TempDir(), "both.crt")
	a, _ := os.ReadFile(stranger.CA)
	b, _ := os.ReadFile(filepath.Join(ca.Dir, "ca.crt"))
	if err := os.WriteFile(bundle, append(a, b...), 0o600); err != nil {
		t.Fatal(err)
	}
	stranger.CA = bundle // it trusts the cluster; the cluster does not trust it
	id, err := pki.Load(stranger)
	if err != nil {
		t.Fatal(err)
	}
	unreachable := status.Error(codes.Unavailable, "write: broken pipe")
	if err := diagnoseTLS(unreachable, id, []string{"127.0.0.1:1", srv.Addr()}); !strings.Contains(err.Error(), "TLS with "+srv.Addr()+": remote error: tls: bad certificate") {
		t.Fatalf("a refused certificate: %v", err)
	}
	good := ca.Identity(t, pki.RoleWorker, "w1")
	if err := diagnoseTLS(unreachable, good, []string{srv.Addr()}); err != unreachable {
		t.Fatalf("an accepted certificate: %v", err)
	}
	if other := status.Error(codes.NotFound, "no job"); diagnoseTLS(other, id, []string{srv.Addr()}) != other {
		t.Fatal("an answer from the cluster was diagnosed")
	}
}
