// Checks deploy/compose.yaml: its services, each loom service's command line
// (loom parses it) and its role's mTLS certificates, mounted read-only; the
// check is shown failing on broken copies.

package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// composeService is the part of a compose service these checks read.
type composeService struct {
	Image       string            `json:"image"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Volumes     []string          `json:"volumes"`
}

func loadCompose(t *testing.T) map[string]*composeService {
	t.Helper()
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]*composeService `json:"services"`
	}
	if err := json.Unmarshal(j, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	if len(f.Services) == 0 {
		t.Fatal("compose.yaml has no services")
	}
	return f.Services
}

// composeCerts is where compose.yaml mounts the certificates directory.
const composeCerts = "/etc/loom/certs"

// checkCompose: every loom service runs mTLS with its role's files:
// LOOM_TLS_CA, LOOM_TLS_CERT and LOOM_TLS_KEY are ca.crt, ROLE.crt and
// ROLE.key of the certificates directory, mounted read-only from
// ${LOOM_CERTS_DIR:-./certs}; ROLE is what its command needs (loomRole; the
// cli service, which runs any command, is an admin).
func checkCompose(t *testing.T, services map[string]*composeService) []error {
	var errs []error
	var names []string
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		s := services[name]
		if imageRepo(s.Image) != "loom" {
			continue
		}
		if len(s.Command) > 0 {
			if err := checkLoomArgs(t, s.Command); err != nil {
				errs = append(errs, fmt.Errorf("service %s: %w", name, err))
			}
		}
		role := loomRole(s.Command)
		mounted := false
		for _, v := range s.Volumes {
			// The source has a colon of its own (${VAR:-default}).
			if strings.Contains(v, ":"+composeCerts) {
				if want := "${LOOM_CERTS_DIR:-./certs}:" + composeCerts + ":ro"; v != want {
					errs = append(errs, fmt.Errorf("service %s: volume %q: want %q", name, v, want))
				}
				mounted = true
			}
		}
		if !mounted {
			errs = append(errs, fmt.Errorf("service %s: the certificates directory is not mounted at %s", name, composeCerts))
		}
		for _, st := range tlsSettings {
			want := composeCerts + "/" + st.key(role)
			if f := flags(s.Command); f[st.flag] != "" {
				errs = append(errs, fmt.Errorf("service %s: --%s: set %s in environment, as the others do", name, st.flag, st.env))
			}
			if got := s.Environment[st.env]; got != want {
				errs = append(errs, fmt.Errorf("service %s (%s): %s=%q, want %s", name, role, st.env, got, want))
			}
		}
	}
	return errs
}

func TestComposeFile(t *testing.T) {
	services := loadCompose(t)
	for _, want := range []string{"c1", "c2", "c3", "w1", "w2", "w3", "cli"} {
		if services[want] == nil {
			t.Errorf("no service %s", want)
		}
	}
	for _, err := range checkCompose(t, services) {
		t.Error(err)
	}
	// The header's commands make the files the services name.
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"loom certs init --dir", "for r in coordinator worker admin; do", "loom certs issue $r $r --dir deploy/certs", "/ca.crt deploy/certs/"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the header of compose.yaml does not say %q", want)
		}
	}
}

func TestComposeCheckCatchesMistakes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(map[string]*composeService)
		want   string
	}{
		{"role", func(s map[string]*composeService) {
			s["w2"].Environment["LOOM_TLS_CERT"] = composeCerts + "/coordinator.crt"
		}, `service w2 (worker): LOOM_TLS_CERT="/etc/loom/certs/coordinator.crt", want /etc/loom/certs/worker.crt`},
		{"cli admin", func(s map[string]*composeService) {
			s["cli"].Environment["LOOM_TLS_KEY"] = composeCerts + "/worker.key"
		}, "service cli (admin): LOOM_TLS_KEY"},
		{"env missing", func(s map[string]*composeService) {
			delete(s["c3"].Environment, "LOOM_TLS_CA")
		}, `service c3 (coordinator): LOOM_TLS_CA=""`},
		{"no mount", func(s map[string]*composeService) {
			s["c2"].Volumes = s["c2"].Volumes[:1]
		}, "service c2: the certificates directory is not mounted"},
		{"writable mount", func(s map[string]*composeService) {
			for i, v := range s["w1"].Volumes {
				s["w1"].Volumes[i] = strings.Replace(v, ":/etc/loom/certs:ro", ":/etc/loom/certs", 1)
			}
		}, `service w1: volume "${LOOM_CERTS_DIR:-./certs}:/etc/loom/certs"`},
		{"flag", func(s map[string]*composeService) {
			s["c1"].Command = append(s["c1"].Command, "--tls-ca", "/etc/loom/certs/ca.crt")
		}, "service c1: --tls-ca"},
	} {
		services := loadCompose(t)
		tc.mutate(services)
		errs := checkCompose(t, services)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%s: errors %v, want one containing %q", tc.name, errs, tc.want)
		}
	}
}
