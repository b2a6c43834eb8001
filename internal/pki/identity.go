package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Identity is one process's certificate and key with the cluster's CA
// bundle, checked against each other when loaded. It is immutable and safe
// for concurrent use.
type Identity struct {
	Role Role
	Name string
	// Leaf is the process's own certificate.
	Leaf *x509.Certificate

	cert  tls.Certificate
	roots *x509.CertPool
}

// Load reads f and checks, before any connection is made, that the CA
// file holds certificates, that the key belongs to the certificate, that
// the certificate is valid now and issued by that CA, and that its role is
// one of want (any role when want is empty). Each error names the file and
// what to do.
func Load(f Files, want ...Role) (*Identity, error) {
	switch {
	case f.CA == "" || f.Cert == "" || f.Key == "":
		return nil, errors.New("mTLS needs all three of the CA bundle, the certificate and its key")
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", f.CA)
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	if b, _ := pem.Decode(certPEM); b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("certificate %s holds no PEM CERTIFICATE block", f.Cert)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("key %s holds no PEM private key", f.Key)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key %s and certificate %s: %w", f.Key, f.Cert, err)
	}
	leaf := pair.Leaf
	role, name, err := RoleOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", f.Cert, err)
	}
	id := &Identity{Role: role, Name: name, Leaf: leaf, cert: pair, roots: roots}
	if err := id.checkTime(f.Cert, time.Now()); err != nil {
		return nil, err
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certificate %s (%s %s) was not issued by a CA in %s: %w", f.Cert, role, name, f.CA, err)
	}
	if len(want) > 0 && !slices.Contains(want, role) {
		return nil, fmt.Errorf("certificate %s is a %s certificate (%s); this needs a %s certificate: loom certs issue %s NAME",
			f.Cert, role, name, joinRoles(want), want[0])
	}
	return id, nil
}

func (id *Identity) checkTime(path string, now time.Time) error {
	switch l := id.Leaf; {
	case now.After(l.NotAfter):
		return fmt.Errorf("certificate %s (%s %s) expired on %s: issue a new one with loom certs issue %s %s",
			path, id.Role, id.Name, l.NotAfter.UTC().Format(time.RFC3339), id.Role, id.Name)
	case now.Before(l.NotBefore):
		return fmt.Errorf("certificate %s (%s %s) is not valid until %s: is this host's clock right?",
			path, id.Role, id.Name, l.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func joinRoles(rs []Role) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// Config returns a TLS 1.3 configuration for either end of a link that
// admits peers holding a certificate of one of the roles given (any role
// when none is given), issued by the cluster's CA and valid now. Both ends
// present their certificates (mutual TLS).
//
// Host names are not checked: a loom peer is trusted for what the cluster's
// CA says it is (its role), not for the address it was reached at. Addresses
// in a cluster are pod IPs, container names and advertise addresses that
// change on every restart; requiring each in a SAN would break restarts
// and buy nothing while the CA is the cluster's own (the model of etcd's
// --peer-cert-allowed-cn and of SPIFFE). The standard chain check
// (including expiry) still runs, in VerifyConnection.
func (id *Identity) Config(peers ...Role) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{id.cert},
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, _, err := id.VerifyPeer(cs.PeerCertificates, peers...)
			return err
		},
	}
}

// VerifyPeer checks a peer's certificate chain (leaf first) against the
// cluster's CA and returns its role and name; the role must be one of
// roles when any are given.
func (id *Identity) VerifyPeer(chain []*x509.Certificate, roles ...Role) (Role, string, error) {
	if len(chain) == 0 {
		return "", "", errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: id.roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", "", fmt.Errorf("peer certificate %q: %w", chain[0].Subject.CommonName, err)
	}
	role, name, err := RoleOf(chain[0])
	if err != nil {
		return "", "", err
	}
	if len(roles) > 0 && !slices.Contains(roles, role) {
		return "", "", fmt.Errorf("peer certificate is a %s certificate (%s); this link admits %s", role, name, joinRoles(roles))
	}
	return role, name, nil
}
