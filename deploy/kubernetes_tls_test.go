// Checks the Kubernetes manifests' mTLS and probes: Secret volume modes,
// each loom container's TLS files, roles and mounts, the coordinator's
// probes against the ports it binds, and TestCoordinatorProbesAnswer, which
// runs a coordinator with mTLS and fetches the probes' paths.

package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// secretModes: the files of a mounted Secret volume are owned by root, and
// by the group fsGroup when the pod sets one; a pod that runs as another
// user reads them only through "other" bits or fsGroup's group bits.
func secretModes(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		sc := w.spec().SecurityContext
		for _, v := range w.spec().Volumes {
			if v.Secret == nil {
				continue
			}
			modes := []int32{0o644}
			if v.Secret.DefaultMode != nil {
				modes[0] = *v.Secret.DefaultMode
			}
			for _, it := range v.Secret.Items {
				if it.Mode != nil {
					modes = append(modes, *it.Mode)
				}
			}
			for _, c := range w.spec().Containers {
				uid := int64(0)
				if sc != nil && sc.RunAsUser != nil {
					uid = *sc.RunAsUser
				}
				if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
					uid = *c.SecurityContext.RunAsUser
				}
				mounted := false
				for _, m := range c.VolumeMounts {
					mounted = mounted || m.Name == v.Name
				}
				for _, mode := range modes {
					if mounted && uid != 0 && mode&0o004 == 0 && (sc == nil || sc.FSGroup == nil || mode&0o040 == 0) {
						errs = append(errs, fmt.Errorf("%s %s: container %s (uid %d) cannot read Secret volume %s (mode %#o, owner root): set the pod's fsGroup and a group-readable mode",
							w.kind, w.name, c.Name, uid, v.Name, mode))
					}
				}
			}
		}
	}
	return errs
}

// tlsSecret is the Secret with every loom process's certificates: ca.crt,
// and ROLE.crt and ROLE.key for each role that a pod runs as.
const tlsSecret = "loom-tls"

// tlsFile is where a container's mTLS setting points: the value loom sees
// (the flag's, or else the env var's), the mount and Secret volume it is on,
// and the Secret key the file is.
type tlsFile struct {
	src       string // "--tls-cert" or "LOOM_TLS_CERT": what set it
	path, key string
	mount     corev1.VolumeMount
	vol       *corev1.Volume
}

// resolveTLS finds the file a setting of container c names and the Secret
// key behind it.
func resolveTLS(objs []object, spec *corev1.PodSpec, c corev1.Container, s tlsSetting) (tlsFile, error) {
	env, _ := envValues(objs, c)
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i], _ = expand(a, env)
	}
	f := tlsFile{src: s.env}
	if v, ok := flags(args)[s.flag]; ok {
		f.path, f.src = v, "--"+s.flag
	} else {
		f.path = env[s.env]
	}
	if f.path == "" {
		return f, fmt.Errorf("no %s env var or --%s flag: every loom process of the cluster runs mTLS", s.env, s.flag)
	}
	if !filepath.IsAbs(f.path) {
		return f, fmt.Errorf("%s %q is not an absolute path", f.src, f.path)
	}
	m, ok := mountOf(&c, f.path)
	if !ok || m.MountPath == f.path {
		return f, fmt.Errorf("%s %s is on no mount", f.src, f.path)
	}
	f.mount = m
	if !m.ReadOnly {
		return f, fmt.Errorf("%s %s: mount %s is not read-only", f.src, f.path, m.Name)
	}
	f.vol = volume(spec, m.Name)
	if f.vol == nil || f.vol.Secret == nil || f.vol.Secret.SecretName != tlsSecret {
		return f, fmt.Errorf("%s %s: volume %s is not the Secret %s", f.src, f.path, m.Name, tlsSecret)
	}
	name := filepath.Base(f.path)
	f.key = name
	if items := f.vol.Secret.Items; len(items) > 0 {
		f.key = ""
		for _, it := range items {
			if it.Path == name {
				f.key = it.Key
			}
		}
		if f.key == "" {
			return f, fmt.Errorf("%s %s: volume %s projects no file %s", f.src, f.path, m.Name, name)
		}
	}
	if _, ok := secretKey(objs, tlsSecret, f.key); !ok {
		return f, fmt.Errorf("%s %s: Secret %s has no key %s", f.src, f.path, tlsSecret, f.key)
	}
	return f, nil
}

// tlsRefs: every loom container runs mTLS with its own role's files. Its
// LOOM_TLS_CA, LOOM_TLS_CERT and LOOM_TLS_KEY (or --tls-* flags) name files
// of a read-only volume of the Secret loom-tls: the keys ca.crt, ROLE.crt and
// ROLE.key, ROLE the role its loom command needs (loomRole). The volume
// projects no other role's key into the pod, and no probe of the container
// is a gRPC one (the kubelet's presents no client certificate).
func tlsRefs(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		spec := w.spec()
		for _, c := range spec.Containers {
			if imageRepo(c.Image) != "loom" {
				continue
			}
			role := loomRole(c.Args)
			tlsVols := map[string]*corev1.Volume{}
			for _, s := range tlsSettings {
				f, err := resolveTLS(objs, spec, c, s)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s %s: container %s (%s): %w", w.kind, w.name, c.Name, role, err))
					continue
				}
				tlsVols[f.vol.Name] = f.vol
				if want := s.key(role); f.key != want {
					errs = append(errs, fmt.Errorf("%s %s: container %s needs a %s certificate, but its %s %s is key %s of Secret %s, want %s",
						w.kind, w.name, c.Name, role, f.src, f.path, f.key, tlsSecret, want))
				}
			}
			for _, v := range tlsVols {
				var keys []string
				for _, it := range v.Secret.Items {
					keys = append(keys, it.Key)
				}
				if len(v.Secret.Items) == 0 {
					for _, sec := range allOf[*corev1.Secret](objs) {
						if sec.Name == tlsSecret {
							for k := range sec.StringData {
								keys = append(keys, k)
							}
							for k := range sec.Data {
								keys = append(keys, k)
							}
						}
					}
				}
				sort.Strings(keys)
				for _, k := range keys {
					if strings.HasSuffix(k, ".key") && k != role+".key" {
						errs = append(errs, fmt.Errorf("%s %s: volume %s puts key %s into a %s pod: project the CA and this role's pair only (items)",
							w.kind, w.name, v.Name, k, role))
					}
				}
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if pr != nil && pr.GRPC != nil {
					errs = append(errs, fmt.Errorf("%s %s: container %s has a gRPC probe: its gRPC port is mTLS and the kubelet's gRPC probe has no client certificate",
						w.kind, w.name, c.Name))
				}
			}
		}
	}
	return errs
}

// coordinatorProbes: a loom coordinator container's liveness probe is
// httpGet /healthz and its readiness probe httpGet /readyz (200 while this
// node knows a Raft leader; liveness on it would restart nodes during an
// election), each on a declared port that --metrics-addr or --http-addr
// binds (the listeners that serve them), in plain HTTP.
func coordinatorProbes(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		for _, c := range w.spec().Containers {
			if imageRepo(c.Image) != "loom" || len(c.Args) == 0 || c.Args[0] != "coordinator" {
				continue
			}
			bound := map[string]string{}
			f := flags(c.Args)
			for _, flag := range []string{"metrics-addr", "http-addr"} {
				if _, p, err := net.SplitHostPort(f[flag]); err == nil {
					bound[p] = flag
				}
			}
			for _, pc := range []struct {
				kind, path string
				probe      *corev1.Probe
			}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
				where := fmt.Sprintf("%s %s: container %s: %s probe", w.kind, w.name, c.Name, pc.kind)
				if pc.probe == nil || pc.probe.HTTPGet == nil {
					errs = append(errs, fmt.Errorf("%s is no httpGet probe", where))
					continue
				}
				h := pc.probe.HTTPGet
				if h.Path != pc.path {
					errs = append(errs, fmt.Errorf("%s: path %q, want %s", where, h.Path, pc.path))
				}
				if h.Scheme != "" && h.Scheme != corev1.URISchemeHTTP {
					errs = append(errs, fmt.Errorf("%s: scheme %s: the coordinator serves the probes in plain HTTP", where, h.Scheme))
				}
				if port, ok := containerPort(c, h.Port); ok {
					if bound[fmt.Sprint(port)] == "" {
						errs = append(errs, fmt.Errorf("%s: port %s (%d) is bound by neither --metrics-addr %q nor --http-addr %q",
							where, h.Port.String(), port, f["metrics-addr"], f["http-addr"]))
					}
				} // an undeclared port is reported by crossRefs
			}
		}
	}
	return errs
}

// TestCoordinatorProbesAnswer runs loom coordinator as the StatefulSet does,
// with mTLS (certificates from loom certs, stored under the Secret keys the
// manifest's LOOM_TLS_* resolve to), and asks the listener that the probes'
// port binds for the probes' paths as the kubelet does: plain HTTP, no
// client certificate. The gRPC port, for comparison, refuses a client
// without a certificate (which is why the probes are not gRPC ones).
func TestCoordinatorProbesAnswer(t *testing.T) {
	tr := loadTree(t)
	objs, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	st := only[*appsv1.StatefulSet](t, objs, "loom-coordinator")
	spec := &st.Spec.Template.Spec
	c := container(t, spec, "coordinator")
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil {
		t.Fatal("the coordinator's probes are not httpGet probes")
	}
	f := flags(c.Args)
	bin := loom(t)
	dir := t.TempDir()
	ca, certs := filepath.Join(dir, "ca"), filepath.Join(dir, "certs")
	for _, args := range [][]string{
		{"certs", "init", "--dir", ca},
		{"certs", "issue", "coordinator", "coordinator", "--dir", certs, "--ca", filepath.Join(ca, "ca.crt"), "--ca-key", filepath.Join(ca, "ca.key")},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("loom %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	data, err := os.ReadFile(filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "ca.crt"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LOOM_TLS_") {
			env = append(env, e)
		}
	}
	plainEnv := env
	for _, s := range tlsSettings {
		tf, err := resolveTLS(objs, spec, *c, s)
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, s.env+"="+filepath.Join(certs, tf.key))
	}
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	addrs := map[string]string{"grpc-addr": free(), "raft-addr": free(), "metrics-addr": free(), "http-addr": free()}
	args := []string{"coordinator", "--id", "c1", "--data-dir", filepath.Join(dir, "data"), "--bootstrap"}
	for _, flag := range []string{"grpc-addr", "raft-addr", "metrics-addr", "http-addr"} {
		if f[flag] != "" {
			args = append(args, "--"+flag, addrs[flag])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", logs.String())
		}
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		h := pr.HTTPGet
		port, ok := containerPort(*c, h.Port)
		if !ok {
			t.Fatalf("probe port %s is not declared", h.Port.String())
		}
		var addr string
		for _, flag := range []string{"metrics-addr", "http-addr"} {
			if _, p, err := net.SplitHostPort(f[flag]); err == nil && p == fmt.Sprint(port) {
				addr = addrs[flag]
			}
		}
		if addr == "" {
			t.Fatalf("probe port %d is bound by neither --metrics-addr nor --http-addr", port)
		}
		url := "http://" + addr + h.Path
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				err = fmt.Errorf("status %s", resp.Status)
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v (the kubelet would fail this probe)", url, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The gRPC port refuses a client without a certificate.
	plain := exec.CommandContext(ctx, bin, "status", "--coordinator", addrs["grpc-addr"], "--timeout", "2s")
	plain.Env = plainEnv
	if out, err := plain.CombinedOutput(); err == nil {
		t.Errorf("loom status without a certificate was answered:\n%s", out)
	}
}
