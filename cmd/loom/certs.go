package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/internal/pki"
)

const day = 24 * time.Hour

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make the certificates of a cluster's mTLS: a CA, then one certificate per process",
		Long: `loom certs makes a private CA for one cluster and issues certificates from it.
Every link of a cluster with certificates is mutual TLS: workers and the CLI
to coordinators (gRPC), coordinators to each other (Raft), workers to workers
(the ring). Each end checks that the other's certificate comes from the
cluster's CA and has the role that link admits:

  coordinator   serves the API and Raft (Raft admits coordinators only)
  worker        registers, trains, reports and joins the ring (the ring
                admits workers only); it may not list, submit, cancel or drain
  admin         the CLI: every API call

Host names are not checked, so one certificate serves a coordinator wherever
it is reached (pod IP, container name, advertise address); --host still adds
names for tools that check them (grpcurl, openssl s_client).

Give each process its certificate with --tls-ca, --tls-cert and --tls-key (or
LOOM_TLS_CA, LOOM_TLS_CERT, LOOM_TLS_KEY). Keep ca.key off the cluster's
machines: only loom certs issue needs it.`,
		Example: `  loom certs init --dir certs
  loom certs issue coordinator c1 --dir certs
  loom certs issue worker w1 --dir certs
  loom certs issue admin alice --dir certs
  loom coordinator --id c1 ... --tls-ca certs/ca.crt --tls-cert certs/c1.crt --tls-key certs/c1.key
  loom status --coordinator c1:7070 --tls-ca certs/ca.crt --tls-cert certs/alice.crt --tls-key certs/alice.key
  loom certs show certs/w1.crt --ca certs/ca.crt`,
	}
	cmd.AddCommand(newCertsInitCmd(), newCertsIssueCmd(), newCertsShowCmd())
	return cmd
}

func newCertsInitCmd() *cobra.Command {
	var (
		dir, name string
		days      int
		overwrite bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make the cluster's CA: DIR/ca.crt (give it to every process) and DIR/ca.key (keep it safe)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days <= 0 {
				return fmt.Errorf("--days %d: must be positive", days)
			}
			c, k, err := pki.NewCA(pki.InitOptions{Name: name, Validity: time.Duration(days) * day})
			if err != nil {
				return err
			}
			f, err := pki.WritePair(dir, "ca", c, k, overwrite)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s (valid %d days)\nnext: loom certs issue coordinator|worker|admin NAME --dir %s\n", f.Cert, f.Key, days, dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "certs", "directory to write ca.crt and ca.key in")
	f.StringVar(&name, "name", "loom cluster CA", "the CA's common name")
	f.IntVar(&days, "days", 3650, "validity in days")
	f.BoolVar(&overwrite, "overwrite", false, "replace an existing CA (every certificate it issued stops being trusted)")
	return cmd
}

func newCertsIssueCmd() *cobra.Command {
	var (
		dir, caCert, caKey, hosts string
		days                      int
		overwrite                 bool
	)
	cmd := &cobra.Command{
		Use:   "issue coordinator|worker|admin NAME",
		Short: "Issue a certificate for one role: DIR/NAME.crt and DIR/NAME.key",
		Long: `Issues a certificate and key for NAME in a role, signed by the cluster's CA.
NAME is a coordinator's node id, a worker's id, or a person; one worker
certificate may also be shared by many workers (a Kubernetes Deployment).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			role, err := pki.ParseRole(args[0])
			if err != nil {
				return err
			}
			if days <= 0 {
				return fmt.Errorf("--days %d: must be positive", days)
			}
			if caCert == "" {
				caCert = filepath.Join(dir, "ca.crt")
			}
			if caKey == "" {
				caKey = filepath.Join(dir, "ca.key")
			}
			cb, err := os.ReadFile(caCert)
			if err != nil {
				return fmt.Errorf("CA certificate: %w (make one with loom certs init)", err)
			}
			kb, err := os.ReadFile(caKey)
			if err != nil {
				return fmt.Errorf("CA key: %w", err)
			}
			var hs []string
			if hosts != "" {
				hs = strings.Split(hosts, ",")
			}
			c, k, err := pki.Issue(cb, kb, pki.IssueOptions{Role: role, Name: args[1], Hosts: hs, Validity: time.Duration(days) * day})
			if err != nil {
				return err
			}
			f, err := pki.WritePair(dir, args[1], c, k, overwrite)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s: %s %s\n", f.Cert, f.Key, role, args[1])
			fmt.Fprintf(cmd.OutOrStdout(), "use: --tls-ca %s --tls-cert %s --tls-key %s\n", caCert, f.Cert, f.Key)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "certs", "directory holding ca.crt and ca.key, and to write NAME.crt and NAME.key in")
	f.StringVar(&caCert, "ca", "", "the CA certificate (default DIR/ca.crt)")
	f.StringVar(&caKey, "ca-key", "", "the CA key (default DIR/ca.key)")
	f.StringVar(&hosts, "host", "", "host names and IPs to add as SANs, comma-separated (loom does not check them; other tools may)")
	f.IntVar(&days, "days", 365, "validity in days (never beyond the CA's)")
	f.BoolVar(&overwrite, "overwrite", false, "replace existing files")
	return cmd
}

func newCertsShowCmd() *cobra.Command {
	var ca string
	cmd := &cobra.Command{
		Use:   "show FILE...",
		Short: "Print a certificate's role, name, validity and names; with --ca, whether that CA issued it",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var roots *x509.CertPool
			if ca != "" {
				b, err := os.ReadFile(ca)
				if err != nil {
					return err
				}
				roots = x509.NewCertPool()
				if !roots.AppendCertsFromPEM(b) {
					return fmt.Errorf("%s holds no PEM certificate", ca)
				}
			}
			bad := 0
			for _, p := range args {
				ok, err := showCert(cmd.OutOrStdout(), p, roots, time.Now())
				if err != nil {
					return err
				}
				if !ok {
					bad++
				}
			}
			if bad > 0 {
				return fmt.Errorf("%d of %d certificates are not usable", bad, len(args))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&ca, "ca", "", "check each certificate against this CA bundle")
	return cmd
}

// showCert prints the certificate in path and reports whether it is usable
// now (valid, and issued by roots when given).
func showCert(w io.Writer, path string, roots *x509.CertPool, now time.Time) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return false, fmt.Errorf("%s holds no PEM CERTIFICATE block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	ok := true
	fmt.Fprintf(w, "%s\n", path)
	if c.IsCA {
		fmt.Fprintf(w, "  CA:       %s\n", c.Subject.CommonName)
	} else if role, name, err := pki.RoleOf(c); err != nil {
		fmt.Fprintf(w, "  role:     none (%v)\n", err)
		ok = false
	} else {
		fmt.Fprintf(w, "  role:     %s\n  name:     %s\n", role, name)
	}
	fmt.Fprintf(w, "  issuer:   %s\n", c.Issuer.CommonName)
	state := fmt.Sprintf("expires in %d days", int(c.NotAfter.Sub(now)/day))
	switch {
	case now.After(c.NotAfter):
		state, ok = "EXPIRED", false
	case now.Before(c.NotBefore):
		state, ok = "NOT YET VALID", false
	}
	fmt.Fprintf(w, "  valid:    %s to %s (%s)\n", c.NotBefore.UTC().Format(time.DateOnly), c.NotAfter.UTC().Format(time.RFC3339), state)
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) > 0 {
		fmt.Fprintf(w, "  hosts:    %s\n", strings.Join(names, ", "))
	}
	if roots != nil {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			fmt.Fprintf(w, "  CA check: FAILED: %v\n", err)
			ok = false
		} else {
			fmt.Fprintf(w, "  CA check: ok\n")
		}
	}
	return ok, nil
}
