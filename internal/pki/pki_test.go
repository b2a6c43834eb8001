package pki

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIssueAndLoad(t *testing.T) {
	ca := NewTestCA(t)
	f := ca.IssueFor(t, IssueOptions{Role: RoleCoordinator, Name: "c1", Hosts: []string{"c1.loom", "10.0.0.5", " "}, Validity: time.Hour})
	id, err := Load(f, RoleCoordinator)
	if err != nil {
		t.Fatal(err)
	}
	if id.Role != RoleCoordinator || id.Name != "c1" {
		t.Fatalf("role %q name %q", id.Role, id.Name)
	}
	if got := id.Leaf.DNSNames; len(got) != 1 || got[0] != "c1.loom" {
		t.Fatalf("DNS SANs %v", got)
	}
	if got := id.Leaf.IPAddresses; len(got) != 1 || got[0].String() != "10.0.0.5" {
		t.Fatalf("IP SANs %v", got)
	}
	if ou := id.Leaf.Subject.OrganizationalUnit; len(ou) != 1 || ou[0] != "coordinator" {
		t.Fatalf("OU %v", ou)
	}
	st, err := os.Stat(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := WritePair(ca.Dir, "c1", []byte("x"), []byte("y"), false); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("rewriting an existing pair: %v", err)
	}
}

// TestLoadRefuses covers the bad input of issue 23: expired, wrong-CA and
// wrong-role certificates, a missing key file, a key of another
// certificate, and files that are not PEM.
func TestLoadRefuses(t *testing.T) {
	ca := NewTestCA(t)
	other := NewTestCA(t)
	good := ca.Issue(t, RoleWorker, "w1")
	w2 := ca.Issue(t, RoleWorker, "w2")
	expired := ca.IssueFor(t, IssueOptions{Role: RoleWorker, Name: "old", Validity: time.Nanosecond})
	foreign := other.Issue(t, RoleWorker, "stranger")
	foreign.CA = good.CA
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		f    Files
		want []Role
		msg  string
	}{
		{"expired", expired, nil, "expired on"},
		{"wrong CA", foreign, nil, "was not issued by a CA in"},
		{"wrong role", good, []Role{RoleCoordinator}, "is a worker certificate (w1); this needs a coordinator certificate"},
		{"missing key", Files{CA: good.CA, Cert: good.Cert, Key: good.Key + ".gone"}, nil, "no such file"},
		{"key of another certificate", Files{CA: good.CA, Cert: good.Cert, Key: w2.Key}, nil, "does not match"},
		{"CA not PEM", Files{CA: junk, Cert: good.Cert, Key: good.Key}, nil, "holds no PEM certificate"},
		{"certificate not PEM", Files{CA: good.CA, Cert: junk, Key: good.Key}, nil, "holds no PEM CERTIFICATE"},
		{"key not PEM", Files{CA: good.CA, Cert: good.Cert, Key: junk}, nil, "holds no PEM private key"},
		{"no CA", Files{Cert: good.Cert, Key: good.Key}, nil, "all three"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(c.f, c.want...)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want an error containing %q", err, c.msg)
			}
		})
	}
	if _, err := Load(good, RoleCoordinator, RoleWorker); err != nil {
		t.Fatalf("a worker certificate where workers are admitted: %v", err)
	}
}

func TestIssueRefuses(t *testing.T) {
	ca := NewTestCA(t)
	for _, o := range []IssueOptions{
		{Role: "operator", Name: "x", Validity: time.Hour},
		{Role: RoleWorker, Name: "a/b", Validity: time.Hour},
		{Role: RoleWorker, Name: "", Validity: time.Hour},
		{Role: RoleWorker, Name: "w", Validity: 0},
	} {
		if _, _, err := Issue(ca.certPEM, ca.keyPEM, o); err == nil {
			t.Errorf("Issue(%+v) succeeded", o)
		}
	}
	other := NewTestCA(t)
	if _, _, err := Issue(ca.certPEM, other.keyPEM, IssueOptions{Role: RoleWorker, Name: "w", Validity: time.Hour}); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("a CA certificate with another CA's key: %v", err)
	}
}

// handshake runs a TLS handshake over a pipe and returns both ends' errors.
func handshake(client, server *tls.Config) (cerr, serr error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(b, server)
		err := s.Handshake()
		if err == nil { // TLS 1.3: the client's certificate is checked after the client thinks it is done
			_, err = s.Write([]byte{1})
		}
		done <- err
		_ = b.Close()
	}()
	c := tls.Client(a, client)
	cerr = c.Handshake()
	if cerr == nil {
		var one [1]byte
		_, cerr = c.Read(one[:])
	}
	_ = a.Close()
	return cerr, <-done
}

func TestConfigAdmitsByRoleAndCA(t *testing.T) {
	ca := NewTestCA(t)
	other := NewTestCA(t)
	w1 := ca.Identity(t, RoleWorker, "w1")
	w2 := ca.Identity(t, RoleWorker, "w2")
	admin := ca.Identity(t, RoleAdmin, "alice")
	stranger := other.Identity(t, RoleWorker, "w9")

	if cerr, serr := handshake(w1.Config(RoleWorker), w2.Config(RoleWorker)); cerr != nil || serr != nil {
		t.Fatalf("two workers: client %v, server %v", cerr, serr)
	}
	// A certificate of the wrong role is refused by the end that checks it.
	_, serr := handshake(admin.Config(RoleWorker), w2.Config(RoleWorker))
	if serr == nil || !strings.Contains(serr.Error(), "is a admin certificate (alice); this link admits worker") {
		t.Fatalf("admin dialling the ring: server %v", serr)
	}
	cerr, _ := handshake(w1.Config(RoleCoordinator), w2.Config(RoleWorker))
	if cerr == nil || !strings.Contains(cerr.Error(), "this link admits coordinator") {
		t.Fatalf("a worker answering where a coordinator is expected: client %v", cerr)
	}
	// Another cluster's CA is refused both ways.
	trusting := stranger.Config(RoleWorker)
	trusting.VerifyConnection = nil // a client that trusts anything: the server must still refuse it
	_, serr = handshake(trusting, w2.Config(RoleWorker))
	if serr == nil || !strings.Contains(serr.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a foreign client: server %v", serr)
	}
	cerr, _ = handshake(w1.Config(RoleWorker), stranger.Config(RoleWorker))
	if cerr == nil || !strings.Contains(cerr.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a foreign server: client %v", cerr)
	}
	// A client without a certificate is refused.
	bare := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if _, serr := handshake(bare, w2.Config()); serr == nil {
		t.Fatal("a client without a certificate was admitted")
	} else if !strings.Contains(serr.Error(), "certificate") {
		t.Fatalf("no client certificate: %v", serr)
	}
}

func TestRoleOfForeignCertificate(t *testing.T) {
	ca := NewTestCA(t)
	id := ca.Identity(t, RoleWorker, "w1")
	leaf := *id.Leaf
	leaf.URIs = nil
	if _, _, err := RoleOf(&leaf); err == nil || !strings.Contains(err.Error(), "names no loom role") {
		t.Fatalf("RoleOf without a loom URI: %v", err)
	}
}
