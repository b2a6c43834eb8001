package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/pki"
)

// tlsFiles are the mTLS flags of every command that talks to a cluster or
// is part of one: the cluster's CA bundle and this process's certificate
// and key, from loom certs.
type tlsFiles struct{ ca, cert, key string }

func (t *tlsFiles) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&t.ca, "tls-ca", os.Getenv("LOOM_TLS_CA"), "mTLS: the cluster's CA bundle, PEM (env LOOM_TLS_CA; loom certs init makes one)")
	f.StringVar(&t.cert, "tls-cert", os.Getenv("LOOM_TLS_CERT"), "mTLS: this process's certificate, PEM (env LOOM_TLS_CERT; loom certs issue ROLE NAME)")
	f.StringVar(&t.key, "tls-key", os.Getenv("LOOM_TLS_KEY"), "mTLS: the key of --tls-cert, PEM (env LOOM_TLS_KEY)")
}

// changed reports whether any --tls-* flag was given on cmd's command line
// (not only in the environment).
func (t *tlsFiles) changed(cmd *cobra.Command) bool {
	f := cmd.Flags()
	return f.Changed("tls-ca") || f.Changed("tls-cert") || f.Changed("tls-key")
}

// load reads the identity the flags name, checking its role against want;
// nil when no flag is given (plain text).
func (t *tlsFiles) load(want ...pki.Role) (*pki.Identity, error) {
	if t.ca == "" && t.cert == "" && t.key == "" {
		return nil, nil
	}
	var missing []string
	for _, f := range [][2]string{{"--tls-ca", t.ca}, {"--tls-cert", t.cert}, {"--tls-key", t.key}} {
		if f[1] == "" {
			missing = append(missing, f[0])
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("mTLS needs --tls-ca, --tls-cert and --tls-key together: %s missing", strings.Join(missing, " and "))
	}
	id, err := pki.Load(pki.Files{CA: t.ca, Cert: t.cert, Key: t.key}, want...)
	if err != nil {
		return nil, fmt.Errorf("mTLS: %w", err)
	}
	return id, nil
}

// dial is api.Dial with the flags' credentials: a client of the cluster
// presents any role's certificate and admits only coordinators.
func (t *tlsFiles) dial(addrs []string) (*grpc.ClientConn, error) {
	id, err := t.load()
	if err != nil {
		return nil, err
	}
	var opts []grpc.DialOption
	if id != nil {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(id.Config(pki.RoleCoordinator))))
	}
	return api.Dial(addrs, opts...)
}

// diagnoseTLS finds out why calls to the coordinators at addrs failed when
// TLS is what failed: it runs one bare handshake with each and reads, so
// that a coordinator's refusal of this certificate arrives as the alert it
// sends. (Through gRPC the refusal often shows only as "broken pipe": in
// TLS 1.3 the server checks the client's certificate after the client has
// started writing, and the reset that answers those bytes can beat the
// alert.) Only for an error that says the coordinators could not be
// reached (Unavailable, DeadlineExceeded) and with TLS. It returns err, with
// the first refusal found added; err as it is when nothing TLS-related is
// found.
func diagnoseTLS(err error, id *pki.Identity, addrs []string) error {
	if c := status.Code(err); id == nil || c != codes.Unavailable && c != codes.DeadlineExceeded {
		return err
	}
	cfg := id.Config(pki.RoleCoordinator)
	cfg.NextProtos = []string{"h2"} // as gRPC: its servers refuse a handshake without it
	for _, a := range addrs {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: cfg}
		c, derr := d.Dial("tcp", a)
		if derr == nil {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, derr = c.Read(make([]byte, 1))
			_ = c.Close()
		}
		var op *net.OpError
		if derr == nil || os.IsTimeout(derr) || errors.Is(derr, io.EOF) || errors.As(derr, &op) && op.Op == "dial" {
			continue // TLS is fine there (it answers, or waits for our request), or nothing answers at all
		}
		return fmt.Errorf("%w\n  TLS with %s: %v", err, a, derr)
	}
	return err
}

// explainTLS adds what to do to an RPC error caused by mismatched
// security on the two ends; other errors pass unchanged.
func explainTLS(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var hint string
	switch {
	case strings.Contains(msg, "tls: bad certificate") || strings.Contains(msg, "tls: unknown certificate authority"):
		hint = "the coordinator refused this certificate: it must be issued by the cluster's CA (loom certs issue) and be valid now"
	case strings.Contains(msg, "tls: certificate required"):
		hint = "the cluster requires mTLS: give --tls-ca, --tls-cert and --tls-key (loom certs)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		hint = "the coordinator speaks plain text: drop the --tls-* flags, or restart it with them"
	case strings.Contains(msg, "error reading server preface") || strings.Contains(msg, "connection closed before server preface"):
		hint = "if the cluster uses mTLS, give --tls-ca, --tls-cert and --tls-key (loom certs)"
	case strings.Contains(msg, "certificate signed by unknown authority"):
		hint = "the coordinator's certificate is not from the CA in --tls-ca"
	default:
		return err
	}
	return fmt.Errorf("%w\n  hint: %s", err, hint)
}

// plainTextWarning is the warning of a process that serves beyond this
// machine without mTLS, or "" when it does not.
func plainTextWarning(id *pki.Identity, addrs ...string) string {
	if id != nil {
		return ""
	}
	for _, a := range addrs {
		if !loopbackOnly(a) {
			return "plain text: the links of this process are neither encrypted nor authenticated, which is fine on one machine only; for a cluster give --tls-ca, --tls-cert and --tls-key (loom certs)"
		}
	}
	return ""
}
