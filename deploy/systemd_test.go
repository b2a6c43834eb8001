// Checks the systemd units in deploy/systemd: they parse, ExecStart is a loom
// command line loom accepts (variables and specifiers expanded as systemd
// does), Environment= names the mTLS files of the unit's role, and
// RestartPreventExitStatus is loom worker's exit status for a cancelled job;
// the checks are shown failing on broken copies.

package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// unit is a systemd unit file: section -> key -> values (a key may repeat).
type unit map[string]map[string][]string

// parseUnit reads systemd's INI dialect: [Section] headers, Key=Value lines,
// '#' and ';' comments, a trailing backslash continuing a line.
func parseUnit(data []byte) (unit, error) {
	u := unit{}
	var section, pending string
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if pending != "" {
			line = pending + " " + strings.TrimSpace(line)
			pending = ""
		} else {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
		}
		if strings.HasSuffix(line, "\\") {
			pending = strings.TrimSuffix(line, "\\")
			continue
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", n, line)
			}
			section = line[1 : len(line)-1]
			if _, dup := u[section]; dup {
				return nil, fmt.Errorf("line %d: section [%s] twice", n, section)
			}
			u[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("line %d: %q is no Key=Value in a section", n, line)
		}
		k = strings.TrimSpace(k)
		u[section][k] = append(u[section][k], strings.TrimSpace(v))
	}
	if pending != "" {
		return nil, errors.New("file ends in a continued line")
	}
	return u, sc.Err()
}

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// execArgs splits ExecStart on whitespace and substitutes specifiers and
// variables as systemd would: "${VAR}" is one word, "$VAR" splits into
// words, "%i" etc. are the unit's specifiers.
func execArgs(line string, vars map[string]string, spec map[byte]string) []string {
	var out []string
	for _, w := range strings.Fields(line) {
		if strings.HasPrefix(w, "$") && !strings.HasPrefix(w, "${") {
			out = append(out, strings.Fields(vars[w[1:]])...)
			continue
		}
		w = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`).ReplaceAllStringFunc(w, func(m string) string {
			return vars[m[2:len(m)-1]]
		})
		w = regexp.MustCompile(`%.`).ReplaceAllStringFunc(w, func(m string) string {
			if v, ok := spec[m[1]]; ok {
				return v
			}
			return m
		})
		out = append(out, w)
	}
	return out
}

func TestSystemdUnits(t *testing.T) {
	spec := map[byte]string{'i': "mnist", 'I': "mnist", 'H': "host1", 'S': "/var/lib", '%': "%"}
	for _, tc := range []struct {
		file, envFile, sub string
		// variants of the environment file's variables; each must give a
		// command line loom accepts.
		vars []map[string]string
	}{
		{"loom-coordinator.service", "/etc/loom/coordinator.env", "coordinator", []map[string]string{
			{"LOOM_ID": "c1", "LOOM_CLUSTER_FLAGS": "--bootstrap"},
			{"LOOM_ID": "c2", "LOOM_CLUSTER_FLAGS": "--join c1.example.com:7070"},
			{"LOOM_ID": "c1"},
		}},
		{"loom-worker@.service", "/etc/loom/%i.env", "worker", []map[string]string{
			{"LOOM_COORDINATOR": "c1:7070,c2:7070", "LOOM_JOB": "job-0001"},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("systemd", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			u, err := parseUnit(data)
			if err != nil {
				t.Fatal(err)
			}
			var sections []string
			for s := range u {
				sections = append(sections, s)
			}
			sort.Strings(sections)
			if !reflect.DeepEqual(sections, []string{"Install", "Service", "Unit"}) {
				t.Errorf("sections %v, want [Unit] [Service] [Install]", sections)
			}
			for _, kv := range [][3]string{
				{"Service", "EnvironmentFile", tc.envFile},
				{"Service", "Restart", "on-failure"},
				{"Service", "NoNewPrivileges", "yes"},
				{"Service", "StateDirectory", "loom"},
				{"Service", "ProtectSystem", "strict"},
				{"Service", "User", "loom"},
				{"Install", "WantedBy", "multi-user.target"},
			} {
				if got := u.get(kv[0], kv[1]); got != kv[2] {
					t.Errorf("[%s] %s=%q, want %q", kv[0], kv[1], got, kv[2])
				}
			}
			if u.get("Unit", "Description") == "" || u.get("Unit", "After") != "network-online.target" {
				t.Error("[Unit] needs a Description and After=network-online.target")
			}
			execs := u["Service"]["ExecStart"]
			if len(execs) != 1 {
				t.Fatalf("ExecStart %q, want one", execs)
			}
			// Defaults set with Environment=, overridden by the file.
			defaults := map[string]string{}
			for _, e := range u["Service"]["Environment"] {
				for _, kv := range strings.Fields(e) {
					k, v, _ := strings.Cut(kv, "=")
					defaults[k] = v
				}
			}
			for _, vars := range tc.vars {
				all := map[string]string{}
				for k, v := range defaults {
					all[k] = v
				}
				for k, v := range vars {
					all[k] = v
				}
				words := execArgs(execs[0], all, spec)
				if !filepath.IsAbs(words[0]) || filepath.Base(words[0]) != "loom" {
					t.Fatalf("ExecStart runs %q, want an absolute path to loom", words[0])
				}
				if words[1] != tc.sub {
					t.Fatalf("ExecStart runs loom %s, want loom %s", words[1], tc.sub)
				}
				for _, w := range words {
					if strings.Contains(w, "$") || regexp.MustCompile(`%[a-zA-Z]`).MatchString(w) {
						t.Errorf("ExecStart word %q is left unexpanded", w)
					}
				}
				if err := checkLoomArgs(t, words[1:]); err != nil {
					t.Error(err)
				}
				f := flags(words[2:])
				if f["join-token-file"] == "" {
					t.Error("no --join-token-file")
				}
				if tc.sub == "coordinator" && f["data-dir"] != "/var/lib/"+u.get("Service", "StateDirectory") {
					t.Errorf("--data-dir %q is not the StateDirectory", f["data-dir"])
				}
				for _, err := range checkUnitTLS(defaults, all, words, tc.sub) {
					t.Error(err)
				}
			}
		})
	}
	// A worker that exits because its job was cancelled is not restarted:
	// the exit status in RestartPreventExitStatus is loom's.
	data, err := os.ReadFile("systemd/loom-worker@.service")
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(data)
	if err != nil {
		t.Fatal(err)
	}
	code := u.get("Service", "RestartPreventExitStatus")
	help, err := exec.Command(loom(t), "worker", "--help").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if code == "" || !strings.Contains(string(help), code+" when the job is cancelled") {
		t.Errorf("RestartPreventExitStatus=%q is not loom worker's exit status for a cancelled job", code)
	}
}

// unitTLSDir is where the units' mTLS files are installed.
const unitTLSDir = "/etc/loom/tls"

// checkUnitTLS: a unit's Environment= defaults set LOOM_TLS_CA,
// LOOM_TLS_CERT and LOOM_TLS_KEY (loom reads them itself) to ca.crt,
// ROLE.crt and ROLE.key in /etc/loom/tls, ROLE the one its loom command
// needs; the environment loom finally sees (all, with the env file) keeps
// them, and ExecStart does not override them with --tls-* flags.
func checkUnitTLS(defaults, all map[string]string, words []string, sub string) []error {
	var errs []error
	role := loomRole([]string{sub})
	f := flags(words)
	for _, s := range tlsSettings {
		want := unitTLSDir + "/" + s.key(role)
		if defaults[s.env] != want {
			errs = append(errs, fmt.Errorf("Environment=%s=%q, want %s (a %s's)", s.env, defaults[s.env], want, role))
		}
		if all[s.env] == "" {
			errs = append(errs, fmt.Errorf("%s is empty in the environment loom sees", s.env))
		}
		if v, ok := f[s.flag]; ok {
			errs = append(errs, fmt.Errorf("ExecStart --%s %s overrides %s: set it with Environment=", s.flag, v, s.env))
		}
	}
	return errs
}

func TestUnitTLSCheckCatchesMistakes(t *testing.T) {
	good := func(role string) map[string]string {
		return map[string]string{"LOOM_TLS_CA": unitTLSDir + "/ca.crt", "LOOM_TLS_CERT": unitTLSDir + "/" + role + ".crt", "LOOM_TLS_KEY": unitTLSDir + "/" + role + ".key"}
	}
	words := []string{"/usr/local/bin/loom", "worker", "--id", "w"}
	if errs := checkUnitTLS(good("worker"), good("worker"), words, "worker"); len(errs) > 0 {
		t.Fatalf("good: %v", errs)
	}
	for _, tc := range []struct {
		name          string
		defaults, all map[string]string
		words         []string
		sub, want     string
	}{
		{"role", good("coordinator"), good("coordinator"), words, "worker", `Environment=LOOM_TLS_CERT="/etc/loom/tls/coordinator.crt", want /etc/loom/tls/worker.crt`},
		{"missing", map[string]string{"LOOM_TLS_CA": unitTLSDir + "/ca.crt"}, good("coordinator"), words, "coordinator", `Environment=LOOM_TLS_KEY=""`},
		{"env file empties it", good("worker"), map[string]string{"LOOM_TLS_CA": unitTLSDir + "/ca.crt", "LOOM_TLS_CERT": unitTLSDir + "/worker.crt"}, words, "worker", "LOOM_TLS_KEY is empty"},
		{"flag", good("worker"), good("worker"), append(words, "--tls-cert", "/tmp/x.crt"), "worker", "ExecStart --tls-cert /tmp/x.crt overrides"},
	} {
		errs := checkUnitTLS(tc.defaults, tc.all, tc.words, tc.sub)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%s: errors %v, want one containing %q", tc.name, errs, tc.want)
		}
	}
}

func TestParseUnitRejectsMistakes(t *testing.T) {
	for _, bad := range []string{
		"[Unit\nDescription=x\n",
		"Description=x\n[Unit]\n",
		"[Unit]\nDescription x\n",
		"[Unit]\n[Unit]\n",
		"[Service]\nExecStart=/loom \\\n",
	} {
		if _, err := parseUnit([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	u, err := parseUnit([]byte("[Service]\n# c\nExecStart=/l a \\\n\t--b c\n"))
	if err != nil || u.get("Service", "ExecStart") != "/l a  --b c" {
		t.Errorf("continuation: %q, %v", u.get("Service", "ExecStart"), err)
	}
}
