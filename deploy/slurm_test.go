// Checks deploy/slurm/loom.sbatch: its bash syntax, and a run with stand-ins
// for srun, scontrol and loom: the loom commands it runs, each a command line
// loom accepts with the mTLS certificates of its role (made with loom certs),
// and that without certificates it runs nothing; the TLS check is shown
// failing on mistakes.

package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestSbatchSyntax(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "slurm/loom.sbatch").CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	data, err := os.ReadFile("slurm/loom.sbatch")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "#!/bin/bash\n") || !strings.Contains(string(data), "\n#SBATCH --nodes=") {
		t.Error("not a bash sbatch script with #SBATCH options")
	}
	if out, err := exec.Command("bash", "-n", "-c", "if then fi").CombinedOutput(); err == nil {
		t.Errorf("bash -n accepted a syntax error: %s", out)
	}
}

// TestSbatchRun runs the script with stand-ins for srun (runs the command
// here), scontrol (two nodes) and loom (records its arguments; launch prints
// a job id, the coordinator runs until SIGTERM), then checks the sequence of
// loom commands and that loom itself accepts each command line.
func TestSbatchRun(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "calls")
	stubs := map[string]string{
		"srun": `#!/bin/bash
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
`,
		"scontrol": `#!/bin/bash
[[ $1 == show && $2 == hostnames && $3 == "node[1-2]" ]] || exit 1
printf 'node1\nnode2\n'
`,
		"loom": `#!/bin/bash
# status answers once the coordinator runs, as the real one does.
[[ $1 != status || -e $CALLS.up ]] || exit 1
printf '%s\x1f' "$@" >>"$CALLS"; echo >>"$CALLS"
case $1 in
coordinator)
	touch "$CALLS.up"
	trap 'echo terminated >>"$CALLS.coordinator"; exit 0' TERM
	while :; do sleep 0.05; done ;;
launch) echo job-0042 ;;
status) echo ok ;;
worker) exit 0 ;;
*) exit 9 ;;
esac
`,
	}
	for name, body := range stubs {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	jobFile := filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(jobFile, []byte("name: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The certificates, made as the script's header says, in its default
	// LOOM_CERTS_DIR (./loom-certs).
	certs := makeCerts(t, filepath.Join(dir, "loom-certs"), "coordinator", "worker", "admin")
	script, err := filepath.Abs("slurm/loom.sbatch")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, jobFile, "--device", "cpu:threads=3")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"CALLS="+log, "LOOM="+filepath.Join(bin, "loom"),
		"SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=node[1-2]", "SLURMD_NODENAME=node1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sbatch script: %v\n%s", err, out)
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var calls [][]string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		calls = append(calls, strings.Split(strings.TrimSuffix(l, "\x1f"), "\x1f"))
	}
	var order []string
	byCmd := map[string]map[string]string{}
	for _, c := range calls {
		if len(order) == 0 || order[len(order)-1] != c[0] {
			order = append(order, c[0])
		}
		byCmd[c[0]] = flags(c[1:])
		if err := checkLoomArgs(t, c); err != nil {
			t.Error(err)
		}
	}
	// The coordinator starts, is waited for, the job is submitted, the
	// workers run, and the status is printed at the end.
	if got := strings.Join(order, " "); got != "coordinator status launch worker status" {
		t.Errorf("loom commands in order: %s\n%s", got, out)
	}
	co, w := byCmd["coordinator"], byCmd["worker"]
	if co["bootstrap"] != "true" || co["grpc-advertise"] != "node1:7070" || co["raft-advertise"] != "node1:7071" || co["grpc-addr"] != "0.0.0.0:7070" {
		t.Errorf("coordinator flags %v", co)
	}
	for _, c := range calls {
		if c[0] == "launch" && (c[1] != jobFile || byCmd["launch"]["coordinator"] != "node1:7070" || byCmd["launch"]["detach"] != "true") {
			t.Errorf("launch %q", c[1:])
		}
	}
	if w["job"] != "job-0042" || w["coordinator"] != "node1:7070" || w["id"] != "worker-node1" || w["device"] != "cpu:threads=3" || w["listen"] != "0.0.0.0:7080" {
		t.Errorf("worker flags %v", w)
	}
	if co["join-token-file"] == "" || co["join-token-file"] != w["join-token-file"] {
		t.Errorf("coordinator and worker token files %q %q", co["join-token-file"], w["join-token-file"])
	}
	st, err := os.Stat(co["join-token-file"])
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() < 32 {
		t.Errorf("token file mode %v size %d, want 0600 and a long token", st.Mode().Perm(), st.Size())
	}
	if !strings.HasPrefix(co["data-dir"], filepath.Join(dir, "loom-42")) {
		t.Errorf("--data-dir %q is not in the run directory", co["data-dir"])
	}
	if term, err := os.ReadFile(log + ".coordinator"); err != nil || strings.TrimSpace(string(term)) != "terminated" {
		t.Errorf("the coordinator was not stopped with SIGTERM at the end: %q %v", term, err)
	}
	for _, err := range checkSbatchTLS(t, calls, certs) {
		t.Error(err)
	}

	// Without the certificates the script stops before running anything.
	cmd = exec.CommandContext(ctx, "bash", script, jobFile)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"CALLS="+log+".nocerts", "LOOM="+filepath.Join(bin, "loom"), "LOOM_CERTS_DIR="+filepath.Join(dir, "no-certs"),
		"SLURM_JOB_ID=43", "SLURM_JOB_NODELIST=node[1-2]", "SLURMD_NODENAME=node1")
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "loom certs") {
		t.Errorf("without certificates: %v\n%s", err, out)
	}
	if _, err := os.Stat(log + ".nocerts"); err == nil {
		t.Error("without certificates the script still ran loom")
	}
}

// makeCerts makes a CA and a certificate named after each role in dir
// with the real loom certs (the CA's key in a directory of its own), and
// copies ca.crt in.
func makeCerts(t *testing.T, dir string, roles ...string) string {
	t.Helper()
	bin := loom(t)
	ca := dir + "-ca"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("loom %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("certs", "init", "--dir", ca)
	for _, r := range roles {
		run("certs", "issue", r, r, "--dir", dir, "--ca", filepath.Join(ca, "ca.crt"), "--ca-key", filepath.Join(ca, "ca.key"))
	}
	data, err := os.ReadFile(filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkSbatchTLS: every loom call of the script has --tls-ca, --tls-cert
// and --tls-key in certs, and loom certs show says the certificate has the
// role the command needs (loomRole) and comes from the CA given with it.
func checkSbatchTLS(t *testing.T, calls [][]string, certs string) []error {
	var errs []error
	for _, c := range calls {
		f := flags(c[1:])
		role := loomRole(c)
		for _, s := range tlsSettings {
			if want := filepath.Join(certs, s.key(role)); f[s.flag] != want {
				errs = append(errs, fmt.Errorf("loom %s (%s): --%s %q, want %s", c[0], role, s.flag, f[s.flag], want))
			}
		}
		if f["tls-cert"] == "" || f["tls-ca"] == "" {
			continue
		}
		out, err := exec.Command(loom(t), "certs", "show", f["tls-cert"], "--ca", f["tls-ca"]).CombinedOutput()
		if err != nil || !regexp.MustCompile(`(?m)^  role: +`+role+`$`).Match(out) {
			errs = append(errs, fmt.Errorf("loom %s (%s): loom certs show %s --ca %s: %v\n%s", c[0], role, f["tls-cert"], f["tls-ca"], err, out))
		}
	}
	return errs
}

func TestSbatchTLSCheckCatchesMistakes(t *testing.T) {
	dir := t.TempDir()
	certs := makeCerts(t, filepath.Join(dir, "certs"), "coordinator", "worker", "admin")
	// A worker certificate filed under the coordinator's name.
	odd := makeCerts(t, filepath.Join(dir, "odd"), "worker")
	if err := os.Rename(filepath.Join(odd, "worker.crt"), filepath.Join(odd, "coordinator.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(odd, "worker.key"), filepath.Join(odd, "coordinator.key")); err != nil {
		t.Fatal(err)
	}
	tls := func(dir, role string) []string {
		return []string{"--tls-ca", filepath.Join(dir, "ca.crt"), "--tls-cert", filepath.Join(dir, role+".crt"), "--tls-key", filepath.Join(dir, role+".key")}
	}
	good := [][]string{
		append([]string{"coordinator", "--id", "c"}, tls(certs, "coordinator")...),
		append([]string{"launch", "job.yaml", "--detach"}, tls(certs, "admin")...),
		append([]string{"worker", "--id", "w"}, tls(certs, "worker")...),
	}
	if errs := checkSbatchTLS(t, good, certs); len(errs) > 0 {
		t.Fatalf("the good calls: %v", errs)
	}
	for _, tc := range []struct {
		name  string
		calls [][]string
		dir   string
		want  string
	}{
		{"no tls", [][]string{{"status", "--coordinator", "n:7070"}}, certs, `loom status (admin): --tls-ca ""`},
		{"role", [][]string{append([]string{"worker", "--id", "w"}, tls(certs, "admin")...)}, certs, "loom worker (worker): --tls-cert"},
		{"file name lies", [][]string{append([]string{"coordinator", "--id", "c"}, tls(odd, "coordinator")...)}, odd, "loom certs show"},
	} {
		errs := checkSbatchTLS(t, tc.calls, tc.dir)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%s: errors %v, want one containing %q", tc.name, errs, tc.want)
		}
	}
}
