// Checks the Kubernetes manifests: they decode strictly, the kustomizations
// list every manifest, and the coordinator StatefulSet, bootstrap overlay,
// worker Deployment, submit Job and Secrets are what the README describes.

package deploy

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/loomtrain/loom/jobspec"
)

// ---------------------------------------------------------------------------
// Kubernetes tests.

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	tr := loadTree(t)
	want := map[string]bool{"Namespace": false, "Service": false, "ConfigMap": false, "Secret": false, "StatefulSet": false, "Deployment": false, "Job": false, "PodDisruptionBudget": false}
	for _, objs := range tr.files {
		for _, o := range objs {
			want[reflect.TypeOf(o.obj).Elem().Name()] = true
		}
	}
	for kind, seen := range want {
		if !seen {
			t.Errorf("no %s among the manifests", kind)
		}
	}
	if len(tr.kusts) < 2 {
		t.Errorf("kustomizations: %v, want the top level and bootstrap/ at least", tr.kusts)
	}
}

func TestKustomizationsListEveryManifest(t *testing.T) {
	tr := loadTree(t)
	refs := map[string]int{}
	for dir, k := range tr.kusts {
		for _, r := range k.Resources {
			if p := filepath.Join(dir, r); tr.files[p] != nil {
				refs[p]++
			}
		}
		for _, p := range k.Patches {
			refs[filepath.Join(dir, p.Path)]++
		}
		if _, _, err := tr.build(dir); err != nil {
			t.Error(err)
		}
	}
	for f := range tr.files {
		if refs[f] != 1 {
			t.Errorf("%s is listed by %d kustomizations, want 1", f, refs[f])
		}
	}
	// The top level deploys every resource manifest (everything but the
	// bootstrap patch).
	_, used, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, u := range used {
		got[u] = true
	}
	for f := range tr.files {
		if !got[f] && !isPatch(tr, f) {
			t.Errorf("%s is not deployed by %s/kustomization.yaml", f, k8sDir)
		}
	}
}

func isPatch(tr *tree, f string) bool {
	for dir, k := range tr.kusts {
		for _, p := range k.Patches {
			if filepath.Join(dir, p.Path) == f {
				return true
			}
		}
	}
	return false
}

func only[T any](t *testing.T, objs []object, name string) T {
	t.Helper()
	var zero T
	for _, x := range objs {
		if o, ok := x.obj.(T); ok && meta(o).Name == name {
			return o
		}
	}
	t.Fatalf("no %T %s", zero, name)
	return zero
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// mountOf reports the volume mounted at the directory holding path.
func mountOf(c *corev1.Container, path string) (corev1.VolumeMount, bool) {
	for _, m := range c.VolumeMounts {
		if filepath.Dir(path) == m.MountPath || path == m.MountPath {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// checkTokenFile: --join-token-file names key "token" of the Secret
// loom-join-token, mounted read-only.
func checkTokenFile(t *testing.T, objs []object, spec *corev1.PodSpec, c *corev1.Container, path string) {
	t.Helper()
	m, ok := mountOf(c, path)
	if !ok || !m.ReadOnly {
		t.Fatalf("container %s: --join-token-file %s is on no read-only mount", c.Name, path)
	}
	v := volume(spec, m.Name)
	if v == nil || v.Secret == nil {
		t.Fatalf("container %s: %s is not a Secret volume", c.Name, m.Name)
	}
	tok, ok := secretKey(objs, v.Secret.SecretName, filepath.Base(path))
	if !ok || tok == "" {
		t.Fatalf("Secret %s has no key %s", v.Secret.SecretName, filepath.Base(path))
	}
	if !strings.Contains(tok, "REPLACE") {
		t.Errorf("the token placeholder %q does not say it must be replaced", tok)
	}
}

func TestCoordinatorStatefulSet(t *testing.T) {
	tr := loadTree(t)
	objs, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	st := only[*appsv1.StatefulSet](t, objs, "loom-coordinator")
	if st.Spec.Replicas == nil || *st.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", st.Spec.Replicas)
	}
	if st.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q: a restarted cluster's pods must start together to elect a leader", st.Spec.PodManagementPolicy)
	}
	headless := only[*corev1.Service](t, objs, st.Spec.ServiceName)
	if !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: publishNotReadyAddresses must be true (coordinators dial each other before any is Ready)", headless.Name)
	}
	spec := &st.Spec.Template.Spec
	c := container(t, spec, "coordinator")
	f := flags(c.Args)
	ns := "$(NAMESPACE)"
	env, errs := envValues(objs, *c)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if env["POD_NAME"] != "loom-pod-0" || env["NAMESPACE"] != "loom" {
		t.Errorf("POD_NAME and NAMESPACE must come from metadata.name and metadata.namespace: %v", env)
	}
	if f["id"] != "$(POD_NAME)" {
		t.Errorf("--id %q, want $(POD_NAME)", f["id"])
	}
	host := "$(POD_NAME)." + headless.Name + "." + ns + ".svc.cluster.local"
	for adv, bind := range map[string]string{"grpc-advertise": "grpc-addr", "raft-advertise": "raft-addr"} {
		_, bport, _ := net.SplitHostPort(f[bind])
		if want := host + ":" + bport; f[adv] != want {
			t.Errorf("--%s %q, want %q", adv, f[adv], want)
		}
	}
	_, grpcPort, _ := net.SplitHostPort(f["grpc-addr"])
	var wantJoin []string
	for i := 0; i < int(*st.Spec.Replicas); i++ {
		wantJoin = append(wantJoin, fmt.Sprintf("%s-%d.%s.%s.svc.cluster.local:%s", st.Name, i, headless.Name, ns, grpcPort))
	}
	if f["join"] != strings.Join(wantJoin, ",") {
		t.Errorf("--join %q, want every pod %q", f["join"], strings.Join(wantJoin, ","))
	}
	if f["bootstrap"] != "" {
		t.Error("the steady-state StatefulSet must not --bootstrap")
	}
	// The Raft state is on the claim.
	m, ok := mountOf(c, filepath.Join(f["data-dir"], "raft.db"))
	if !ok || len(st.Spec.VolumeClaimTemplates) != 1 || m.Name != st.Spec.VolumeClaimTemplates[0].Name {
		t.Errorf("--data-dir %s is not the volumeClaimTemplate's mount (%v)", f["data-dir"], c.VolumeMounts)
	}
	checkTokenFile(t, objs, spec, c, f["join-token-file"])
	// HTTP probes on the metrics listener (the gRPC port is mTLS, and the
	// kubelet's gRPC probe has no client certificate): liveness /healthz,
	// readiness /readyz (a leader is known).
	_, metricsPort, _ := net.SplitHostPort(f["metrics-addr"])
	for _, pc := range []struct {
		name, path string
		probe      *corev1.Probe
	}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
		if pc.probe == nil || pc.probe.HTTPGet == nil || pc.probe.GRPC != nil || pc.probe.HTTPGet.Path != pc.path {
			t.Errorf("%s probe %+v, want httpGet %s", pc.name, pc.probe, pc.path)
			continue
		}
		if port, ok := containerPort(*c, pc.probe.HTTPGet.Port); !ok || fmt.Sprint(port) != metricsPort {
			t.Errorf("%s probe port %s, want the --metrics-addr port %s", pc.name, pc.probe.HTTPGet.Port.String(), metricsPort)
		}
	}
	// mTLS with the coordinator's pair of loom-tls.
	for _, s := range tlsSettings {
		tf, err := resolveTLS(objs, spec, *c, s)
		if err != nil || tf.key != s.key("coordinator") {
			t.Errorf("%s: key %q, %v; want %s", s.env, tf.key, err, s.key("coordinator"))
		}
	}
	// The clients' Service serves the gRPC API and the status page.
	client := only[*corev1.Service](t, objs, "loom")
	ports := map[int32]bool{}
	for _, p := range client.Spec.Ports {
		ports[p.Port] = true
	}
	_, httpPort, _ := net.SplitHostPort(f["http-addr"])
	for _, p := range []string{grpcPort, httpPort} {
		n, _ := strconv.Atoi(p)
		if !ports[int32(n)] {
			t.Errorf("Service loom has no port %s", p)
		}
	}
	if client.Spec.ClusterIP == corev1.ClusterIPNone || client.Spec.PublishNotReadyAddresses {
		t.Error("Service loom must be a ClusterIP Service of Ready coordinators")
	}
	if a := st.Spec.Template.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("prometheus annotations %v", a)
	}
}

func TestBootstrapOverlay(t *testing.T) {
	tr := loadTree(t)
	base, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	boot, _, err := tr.build(filepath.Join(k8sDir, "bootstrap"))
	if err != nil {
		t.Fatal(err)
	}
	bs := only[*appsv1.StatefulSet](t, base, "loom-coordinator")
	ov := only[*appsv1.StatefulSet](t, boot, "loom-coordinator")
	if ov.Spec.Replicas == nil || *ov.Spec.Replicas != 1 {
		t.Errorf("bootstrap replicas %v, want 1", ov.Spec.Replicas)
	}
	// The same arguments, with --bootstrap in place of --join LIST.
	var want []string
	args := container(t, &bs.Spec.Template.Spec, "coordinator").Args
	for i := 0; i < len(args); i++ {
		if args[i] == "--join" {
			want = append(want, "--bootstrap")
			i++
			continue
		}
		want = append(want, args[i])
	}
	if got := container(t, &ov.Spec.Template.Spec, "coordinator").Args; !reflect.DeepEqual(got, want) {
		t.Errorf("bootstrap args\n%q\nwant the base's with --bootstrap for --join:\n%q", got, want)
	}
	// Nothing else differs: applying the base after the bootstrap only
	// grows the StatefulSet.
	bs.Spec.Replicas, ov.Spec.Replicas = nil, nil
	container(t, &bs.Spec.Template.Spec, "coordinator").Args = nil
	container(t, &ov.Spec.Template.Spec, "coordinator").Args = nil
	if !reflect.DeepEqual(bs, ov) {
		t.Error("the bootstrap StatefulSet differs from the base in more than replicas and args")
	}
	if len(base) != len(boot) {
		t.Errorf("bootstrap/ deploys %d objects, the base %d", len(boot), len(base))
	}
	if bs.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType {
		t.Errorf("updateStrategy %q: growing the cluster after the bootstrap must not restart pod 0", bs.Spec.UpdateStrategy.Type)
	}
}

func TestWorkerDeployment(t *testing.T) {
	tr := loadTree(t)
	objs, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	d := only[*appsv1.Deployment](t, objs, "loom-worker")
	spec := &d.Spec.Template.Spec
	c := container(t, spec, "worker")
	if c.Args[0] != "worker" {
		t.Fatalf("args %q", c.Args)
	}
	f := flags(c.Args)
	env, errs := envValues(objs, *c)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for flag, want := range map[string]string{"id": "$(POD_NAME)", "advertise": "$(POD_IP)", "job": "$(LOOM_JOB)"} {
		if f[flag] != want {
			t.Errorf("--%s %q, want %q", flag, f[flag], want)
		}
	}
	if env["POD_NAME"] != "loom-pod-0" || env["POD_IP"] != "10.0.0.7" || !regexp.MustCompile(`^job-\d{4}$`).MatchString(env["LOOM_JOB"]) {
		t.Errorf("env %v: POD_NAME from metadata.name, POD_IP from status.podIP, LOOM_JOB a job id from the ConfigMap", env)
	}
	if h, _, err := net.SplitHostPort(f["listen"]); err != nil || h != "0.0.0.0" {
		t.Errorf("--listen %q must bind every interface", f["listen"])
	}
	// --coordinator is the clients' Service on its gRPC port.
	host, port, err := net.SplitHostPort(f["coordinator"])
	if err != nil {
		t.Fatal(err)
	}
	svc := only[*corev1.Service](t, objs, host)
	st := only[*appsv1.StatefulSet](t, objs, "loom-coordinator")
	if !matches(svc.Spec.Selector, st.Spec.Template.Labels) || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Errorf("--coordinator %s: Service %s is not the coordinators' ClusterIP Service", f["coordinator"], host)
	}
	found := false
	for _, p := range svc.Spec.Ports {
		found = found || fmt.Sprint(p.Port) == port
	}
	if !found {
		t.Errorf("Service %s has no port %s", host, port)
	}
	checkTokenFile(t, objs, spec, c, f["join-token-file"])
	for _, s := range tlsSettings {
		tf, err := resolveTLS(objs, spec, *c, s)
		if err != nil || tf.key != s.key("worker") {
			t.Errorf("%s: key %q, %v; want %s", s.env, tf.key, err, s.key("worker"))
		}
	}
	// The cpu device's threads match the CPU limit (it would use every core
	// of the node otherwise).
	lim, req := c.Resources.Limits, c.Resources.Requests
	if lim.Cpu().IsZero() || lim.Memory().IsZero() || req.Cpu().IsZero() || req.Memory().IsZero() {
		t.Errorf("worker resources %+v: requests and limits of cpu and memory", c.Resources)
	}
	if want := fmt.Sprintf("cpu:threads=%d", lim.Cpu().Value()); f["device"] != want {
		t.Errorf("--device %q, want %q (the CPU limit)", f["device"], want)
	}
	// The job's checkpoint.dir is a volume of the worker.
	job := submittedJob(t, objs)
	if _, ok := mountOf(c, filepath.Join(job.Checkpoint.Dir, "x")); !ok {
		t.Errorf("checkpoint.dir %s is on no volume of the workers", job.Checkpoint.Dir)
	}
}

// submittedJob checks the loom-submit Job and returns the job config it
// submits, as loom parses it.
func submittedJob(t *testing.T, objs []object) *jobspec.Job {
	t.Helper()
	j := only[*batchv1.Job](t, objs, "loom-submit")
	spec := &j.Spec.Template.Spec
	c := container(t, spec, "launch")
	if len(c.Args) < 2 || c.Args[0] != "launch" {
		t.Fatalf("args %q, want launch FILE ...", c.Args)
	}
	f := flags(c.Args[2:])
	if f["detach"] != "true" || f["coordinator"] != "loom:7070" {
		t.Errorf("args %q: want --coordinator loom:7070 --detach", c.Args)
	}
	m, ok := mountOf(c, c.Args[1])
	if !ok {
		t.Fatalf("%s is on no mount", c.Args[1])
	}
	v := volume(spec, m.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("%s is not in a ConfigMap volume", c.Args[1])
	}
	body, ok := configMapKey(objs, v.ConfigMap.Name, filepath.Base(c.Args[1]))
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", v.ConfigMap.Name, filepath.Base(c.Args[1]))
	}
	job, err := jobspec.Parse(c.Args[1], []byte(body))
	if err != nil {
		t.Fatalf("the submitted job config: %v", err)
	}
	// Submitting needs an admin certificate.
	for _, s := range tlsSettings {
		tf, err := resolveTLS(objs, spec, *c, s)
		if err != nil || tf.key != s.key("admin") {
			t.Errorf("loom-submit %s: key %q, %v; want %s", s.env, tf.key, err, s.key("admin"))
		}
	}
	return job
}

func TestSubmittedJobIsTheMNISTExample(t *testing.T) {
	tr := loadTree(t)
	objs, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	job := submittedJob(t, objs)
	ex, err := jobspec.Load("../examples/mnist-mlp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if job.Checkpoint.Dir == "" || !filepath.IsAbs(job.Checkpoint.Dir) {
		t.Errorf("checkpoint.dir %q: an absolute path on the workers' volume", job.Checkpoint.Dir)
	}
	job.Checkpoint = ex.Checkpoint
	a, err := job.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ex.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("the ConfigMap's job differs from examples/mnist-mlp.yaml beyond checkpoint:\n%s\nvs\n%s", a, b)
	}
}

func TestKubernetesSecretsArePlaceholders(t *testing.T) {
	tr := loadTree(t)
	objs, _, err := tr.build(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range allOf[*corev1.Secret](objs) {
		if len(s.Data) > 0 {
			t.Errorf("Secret %s: data (base64) hides whether it is a placeholder; use stringData", s.Name)
		}
		for k, v := range s.StringData {
			if !strings.Contains(v, "REPLACE") {
				t.Errorf("Secret %s key %s: %q is not marked as a placeholder to replace", s.Name, k, v)
			}
		}
	}
	readme, err := os.ReadFile(filepath.Join(k8sDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kubectl apply -k deploy/kubernetes/bootstrap", "kubectl apply -k deploy/kubernetes\n", "kubectl -n loom scale deployment/loom-worker", "loom status", "8080", "mTLS", "deploy/Dockerfile",
		"loom certs init", "kubectl create secret generic loom-tls", "/healthz", "/readyz"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md does not mention %q", want)
		}
	}
}

// ---------------------------------------------------------------------------
// The checks catch mistakes.

func TestStrictDecodingRejectsMistakes(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(k8sDir, "base", "coordinator.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeDocuments("coordinator.yaml", data); err != nil {
		t.Fatalf("the manifest itself: %v", err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"  replicas: 3\n", "  replicass: 3\n", `unknown field "replicass"`},
		{"  publishNotReadyAddresses: true\n", "  publishNotReadyAddress: true\n", `unknown field "publishNotReadyAddress"`},
		{"  replicas: 3\n", "  replicas: three\n", "cannot unmarshal string"},
		{"  serviceName: loom-coordinator\n", "  servicename: loom-coordinator\n", "servicename"},
		{"kind: StatefulSet\n", "kind: StatefulSett\n", `unknown kind "StatefulSett"`},
		{"apiVersion: apps/v1\nkind: StatefulSet\n", "apiVersion: apps/v1beta9\nkind: StatefulSet\n", "unknown kind"},
		{"  replicas: 3\n", "  replicas: 3\n  replicas: 4\n", `key "replicas" already set`},
		{"              path: /healthz\n", "              pth: /healthz\n", `unknown field "pth"`},
		{"            httpGet:\n              path: /readyz\n", "            httpget:\n              path: /readyz\n", "httpget"},
	} {
		bad := strings.Replace(string(data), tc.from, tc.to, 1)
		if bad == string(data) {
			t.Fatalf("%q is not in coordinator.yaml", tc.from)
		}
		_, err := decodeDocuments("coordinator.yaml", []byte(bad))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q -> %q: error %v, want one containing %q", tc.from, tc.to, err, tc.want)
		}
	}
	var k kustomization
	if err := decodeStrict([]byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource: [a.yaml]\n"), &k); err == nil {
		t.Error("a kustomization with a misspelled field decoded")
	}
}
