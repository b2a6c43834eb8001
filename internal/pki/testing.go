package pki

import (
	"path/filepath"
	"testing"
	"time"
)

// TestCA is a cluster CA in a test's temporary directory, for tests that
// need certificates.
type TestCA struct {
	Dir             string
	certPEM, keyPEM []byte
}

// NewTestCA makes a CA in t.TempDir() and writes its certificate as ca.crt.
func NewTestCA(t testing.TB) *TestCA {
	t.Helper()
	dir := t.TempDir()
	c, k, err := NewCA(InitOptions{Name: "loom test CA", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAtomic(filepath.Join(dir, "ca.crt"), c, 0o644); err != nil {
		t.Fatal(err)
	}
	return &TestCA{Dir: dir, certPEM: c, keyPEM: k}
}

// Issue writes a certificate for role and name valid for an hour and
// returns its files (with the CA bundle).
func (ca *TestCA) Issue(t testing.TB, role Role, name string) Files {
	t.Helper()
	return ca.IssueFor(t, IssueOptions{Role: role, Name: name, Validity: time.Hour})
}

// IssueFor writes a certificate made with o and returns its files.
func (ca *TestCA) IssueFor(t testing.TB, o IssueOptions) Files {
	t.Helper()
	c, k, err := Issue(ca.certPEM, ca.keyPEM, o)
	if err != nil {
		t.Fatal(err)
	}
	f, err := WritePair(ca.Dir, o.Name, c, k, true)
	if err != nil {
		t.Fatal(err)
	}
	f.CA = filepath.Join(ca.Dir, "ca.crt")
	return f
}

// Identity issues and loads a certificate for role and name.
func (ca *TestCA) Identity(t testing.TB, role Role, name string) *Identity {
	t.Helper()
	id, err := Load(ca.Issue(t, role, name))
	if err != nil {
		t.Fatal(err)
	}
	return id
}
