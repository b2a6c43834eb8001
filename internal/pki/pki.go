// Package pki makes and loads the certificates of a loom cluster's mTLS:
// one private CA per cluster, and a certificate per process whose role
// (coordinator, worker or admin) is written into it. Every link checks the
// peer's certificate against the cluster's CA and the peer's role against
// what the link admits; host names are not checked (see Identity.Config).
//
// A certificate names its role twice: as the URI SAN spiffe://loom/ROLE/NAME
// (what loom reads; the SPIFFE convention for workload identity) and as the
// subject's OU (what a person reading `openssl x509 -text` sees). Keys are
// ECDSA P-256: small, fast to handshake, and understood by every TLS stack.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Role is what a certificate's holder may do.
type Role string

const (
	// RoleCoordinator serves the API, replicates Raft, and forwards calls.
	RoleCoordinator Role = "coordinator"
	// RoleWorker registers, trains, reports, and joins the ring.
	RoleWorker Role = "worker"
	// RoleAdmin runs the CLI: submits and cancels jobs, drains workers,
	// reads status, changes the coordinator membership.
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order help texts name them.
var Roles = []Role{RoleCoordinator, RoleWorker, RoleAdmin}

// ParseRole accepts a role's name.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if !slices.Contains(Roles, r) {
		return "", fmt.Errorf("unknown role %q (want coordinator, worker or admin)", s)
	}
	return r, nil
}

// spiffeHost is the trust domain of every loom identity URI.
const spiffeHost = "loom"

// identityURI is the URI SAN naming role and name.
func identityURI(role Role, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: spiffeHost, Path: "/" + string(role) + "/" + name}
}

// RoleOf reads the role and name a loom certificate carries.
func RoleOf(c *x509.Certificate) (Role, string, error) {
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" || u.Host != spiffeHost {
			continue
		}
		role, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if r, err := ParseRole(role); ok && err == nil && name != "" {
			return r, name, nil
		}
	}
	return "", "", fmt.Errorf("certificate %q names no loom role (no spiffe://loom/ROLE/NAME URI): was it made by loom certs issue?", c.Subject.CommonName)
}

// Files names a CA bundle and one process's certificate and key, PEM.
type Files struct{ CA, Cert, Key string }

// InitOptions configures NewCA.
type InitOptions struct {
	// Name is the CA's common name.
	Name string
	// Validity is how long the CA is valid.
	Validity time.Duration
}

// IssueOptions configures Issue.
type IssueOptions struct {
	Role Role
	// Name identifies the holder: the coordinator's node id, the worker's
	// id, a person. Letters, digits, '.', '-' and '_'.
	Name string
	// Hosts become DNS or IP SANs. loom checks roles, not host names, so
	// they are only for other tools (grpcurl, openssl s_client) that check
	// the name they dialled.
	Hosts []string
	// Validity is how long the certificate is valid.
	Validity time.Duration
}

// CheckName reports whether name may name a certificate's holder.
func CheckName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("name %q: only letters, digits, '.', '-' and '_'", name)
		}
	}
	return nil
}

// NewCA makes a self-signed CA certificate and its key, PEM-encoded.
func NewCA(o InitOptions) (certPEM, keyPEM []byte, err error) {
	if o.Validity <= 0 {
		return nil, nil, fmt.Errorf("CA validity %v must be positive", o.Validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: o.Name, Organization: []string{"loom"}},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate clock skew between hosts
		NotAfter:              now.Add(o.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// Issue makes a certificate for o.Role and o.Name signed by the CA whose
// certificate and key are given (PEM), and returns it and its new key.
func Issue(caCertPEM, caKeyPEM []byte, o IssueOptions) (certPEM, keyPEM []byte, err error) {
	if _, err := ParseRole(string(o.Role)); err != nil {
		return nil, nil, err
	}
	if err := CheckName(o.Name); err != nil {
		return nil, nil, err
	}
	if o.Validity <= 0 {
		return nil, nil, fmt.Errorf("validity %v must be positive", o.Validity)
	}
	ca, caKey, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(o.Validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter // a certificate never outlives its CA
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.Name, Organization: []string{"loom"}, OrganizationalUnit: []string{string(o.Role)}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every loom process is both ends of some link (a worker dials and
		// accepts ring connections; a coordinator serves and forwards).
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{identityURI(o.Role, o.Name)},
	}
	for _, h := range o.Hosts {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case h == "":
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, nil, errors.New("CA certificate: no PEM CERTIFICATE block")
	}
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("CA certificate %q is not a CA", ca.Subject.CommonName)
	}
	k, _ := pem.Decode(keyPEM)
	if k == nil {
		return nil, nil, errors.New("CA key: no PEM block")
	}
	key, err := x509.ParseECPrivateKey(k.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("CA key does not belong to CA certificate %q", ca.Subject.CommonName)
	}
	if time.Now().After(ca.NotAfter) {
		return nil, nil, fmt.Errorf("CA %q expired on %s: make a new one (loom certs init) and reissue every certificate", ca.Subject.CommonName, ca.NotAfter.Format(time.DateOnly))
	}
	return ca, key, nil
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// WritePair writes a certificate and its key as dir/name.crt and
// dir/name.key (the key readable by its owner only), refusing to replace
// existing files unless overwrite is set, and returns their paths.
func WritePair(dir, name string, certPEM, keyPEM []byte, overwrite bool) (Files, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, err
	}
	f := Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	if !overwrite {
		for _, p := range []string{f.Cert, f.Key} {
			if _, err := os.Stat(p); err == nil {
				return Files{}, fmt.Errorf("%s exists (give --overwrite to replace it)", p)
			}
		}
	}
	// Both files are written in full before either replaces anything, so
	// that a failure leaves the old pair (or none), never half of a new one.
	key, err := writeTemp(f.Key, keyPEM, 0o600)
	if err != nil {
		return Files{}, err
	}
	defer os.Remove(key)
	cert, err := writeTemp(f.Cert, certPEM, 0o644)
	if err != nil {
		return Files{}, err
	}
	defer os.Remove(cert)
	if err := os.Rename(key, f.Key); err != nil {
		return Files{}, err
	}
	if err := os.Rename(cert, f.Cert); err != nil {
		_ = os.Remove(f.Key) // a key without its certificate is of no use
		return Files{}, err
	}
	return f, nil
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, b, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	return os.Rename(tmp, path)
}

// writeTemp writes b, with mode, to a new temporary file beside path and
// returns its name.
func writeTemp(path string, b []byte, mode os.FileMode) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(b)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}
