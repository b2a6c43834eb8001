// Checks that the Kubernetes manifests refer to each other correctly:
// selectors, ports, volumes, env vars, ConfigMap and Secret keys, and every
// container's loom command line; each check is shown failing on a broken
// copy.

package deploy

import (
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// workload is a StatefulSet, Deployment or Job: its pod template and what
// the template may refer to beyond its own volumes.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector // nil for a Job
	template   *corev1.PodTemplateSpec
	claims     []string // a StatefulSet's volumeClaimTemplates
}

func (w workload) spec() *corev1.PodSpec { return &w.template.Spec }

func workloads(objs []object) []workload {
	var out []workload
	for _, x := range objs {
		switch o := x.obj.(type) {
		case *appsv1.StatefulSet:
			w := workload{kind: "StatefulSet", name: o.Name, selector: o.Spec.Selector, template: &o.Spec.Template}
			for _, c := range o.Spec.VolumeClaimTemplates {
				w.claims = append(w.claims, c.Name)
			}
			out = append(out, w)
		case *appsv1.Deployment:
			out = append(out, workload{kind: "Deployment", name: o.Name, selector: o.Spec.Selector, template: &o.Spec.Template})
		case *batchv1.Job:
			out = append(out, workload{kind: "Job", name: o.Name, template: &o.Spec.Template})
		}
	}
	return out
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// envValues gives each env var of c the value a pod would see: literals,
// ConfigMap and Secret keys from the manifests, and sample values for the
// downward API fields.
func envValues(objs []object, c corev1.Container) (map[string]string, []error) {
	sample := map[string]string{"metadata.name": "loom-pod-0", "metadata.namespace": "loom", "status.podIP": "10.0.0.7", "spec.nodeName": "node-1"}
	env := map[string]string{}
	var errs []error
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			v, err := expand(e.Value, env)
			if err != nil {
				errs = append(errs, fmt.Errorf("container %s env %s: %w", c.Name, e.Name, err))
			}
			env[e.Name] = v
		case e.ValueFrom.FieldRef != nil:
			v, ok := sample[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				errs = append(errs, fmt.Errorf("container %s env %s: fieldPath %q not supported here", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath))
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			v, ok := configMapKey(objs, r.Name, r.Key)
			if !ok {
				errs = append(errs, fmt.Errorf("container %s env %s: no ConfigMap %s with key %s", c.Name, e.Name, r.Name, r.Key))
			}
			env[e.Name] = v
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			v, ok := secretKey(objs, r.Name, r.Key)
			if !ok {
				errs = append(errs, fmt.Errorf("container %s env %s: no Secret %s with key %s", c.Name, e.Name, r.Name, r.Key))
			}
			env[e.Name] = v
		default:
			errs = append(errs, fmt.Errorf("container %s env %s: unsupported valueFrom", c.Name, e.Name))
		}
	}
	return env, errs
}

// expand replaces $(VAR) as the kubelet does; an undefined VAR is an error
// here (Kubernetes would pass "$(VAR)" on literally).
func expand(s string, env map[string]string) (string, error) {
	var err error
	out := envRef.ReplaceAllStringFunc(s, func(m string) string {
		name := envRef.FindStringSubmatch(m)[1]
		v, ok := env[name]
		if !ok {
			err = fmt.Errorf("$(%s) is not an env var defined before it", name)
		}
		return v
	})
	return out, err
}

func configMapKey(objs []object, name, key string) (string, bool) {
	for _, cm := range allOf[*corev1.ConfigMap](objs) {
		if cm.Name == name {
			v, ok := cm.Data[key]
			return v, ok
		}
	}
	return "", false
}

func secretKey(objs []object, name, key string) (string, bool) {
	for _, s := range allOf[*corev1.Secret](objs) {
		if s.Name == name {
			if v, ok := s.StringData[key]; ok {
				return v, true
			}
			v, ok := s.Data[key]
			return string(v), ok
		}
	}
	return "", false
}

// crossRefs checks what the API server cannot: that the objects fit
// together. It returns every problem found.
func crossRefs(objs []object) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	ws := workloads(objs)
	services := map[string]*corev1.Service{}
	for _, s := range allOf[*corev1.Service](objs) {
		services[s.Name] = s
	}
	for _, w := range ws {
		if w.selector != nil {
			if len(w.selector.MatchExpressions) > 0 {
				bad("%s %s: matchExpressions are not checked here", w.kind, w.name)
			}
			if !matches(w.selector.MatchLabels, w.template.Labels) {
				bad("%s %s: selector %v does not match its pod labels %v", w.kind, w.name, w.selector.MatchLabels, w.template.Labels)
			}
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range w.spec().Volumes {
			volumes[v.Name] = v
			if s := v.Secret; s != nil && !hasObject(objs, func(o *corev1.Secret) bool { return o.Name == s.SecretName }) {
				bad("%s %s: volume %s: no Secret %s", w.kind, w.name, v.Name, s.SecretName)
			}
			if c := v.ConfigMap; c != nil && !hasObject(objs, func(o *corev1.ConfigMap) bool { return o.Name == c.Name }) {
				bad("%s %s: volume %s: no ConfigMap %s", w.kind, w.name, v.Name, c.Name)
			}
		}
		for _, c := range w.spec().Containers {
			for _, m := range c.VolumeMounts {
				_, isVol := volumes[m.Name]
				isClaim := false
				for _, cl := range w.claims {
					isClaim = isClaim || cl == m.Name
				}
				if !isVol && !isClaim {
					bad("%s %s: container %s mounts %q, which is no volume of the pod", w.kind, w.name, c.Name, m.Name)
				}
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				switch {
				case pr == nil:
				case pr.GRPC != nil:
					if _, ok := containerPort(c, intstr.FromInt32(pr.GRPC.Port)); !ok {
						bad("%s %s: container %s probes port %d, which it does not declare", w.kind, w.name, c.Name, pr.GRPC.Port)
					}
				case pr.HTTPGet != nil:
					if _, ok := containerPort(c, pr.HTTPGet.Port); !ok {
						bad("%s %s: container %s probes port %s, which it does not declare", w.kind, w.name, c.Name, pr.HTTPGet.Port.String())
					}
				}
			}
			env, e := envValues(objs, c)
			for _, err := range e {
				bad("%s %s: %v", w.kind, w.name, err)
			}
			for _, a := range c.Args {
				if _, err := expand(a, env); err != nil {
					bad("%s %s: container %s arg %q: %v", w.kind, w.name, c.Name, a, err)
				}
			}
		}
		if p := w.template.Annotations["prometheus.io/port"]; p != "" || w.template.Annotations["prometheus.io/scrape"] == "true" {
			found := false
			for _, c := range w.spec().Containers {
				if _, port, err := net.SplitHostPort(flags(c.Args)["metrics-addr"]); err == nil && port == p {
					found = true
				}
			}
			if !found {
				bad("%s %s: prometheus.io/port %q is no container's --metrics-addr port", w.kind, w.name, p)
			}
		}
	}
	for _, s := range services {
		var targets []workload
		for _, w := range ws {
			if matches(s.Spec.Selector, w.template.Labels) {
				targets = append(targets, w)
			}
		}
		if len(targets) == 0 {
			bad("Service %s: selector %v matches no pod template", s.Name, s.Spec.Selector)
		}
		for _, sp := range s.Spec.Ports {
			for _, w := range targets {
				found := false
				for _, c := range w.spec().Containers {
					for _, cp := range c.Ports {
						if (sp.TargetPort.StrVal != "" && cp.Name == sp.TargetPort.StrVal) ||
							(sp.TargetPort.StrVal == "" && cp.ContainerPort == sp.TargetPort.IntVal) ||
							(sp.TargetPort.StrVal == "" && sp.TargetPort.IntVal == 0 && cp.ContainerPort == sp.Port) {
							found = true
						}
					}
				}
				if !found {
					bad("Service %s port %s: %s %s has no container port %s", s.Name, sp.Name, w.kind, w.name, sp.TargetPort.String())
				}
			}
		}
	}
	for _, st := range allOf[*appsv1.StatefulSet](objs) {
		s, ok := services[st.Spec.ServiceName]
		switch {
		case !ok:
			bad("StatefulSet %s: serviceName %q is no Service", st.Name, st.Spec.ServiceName)
		case s.Spec.ClusterIP != corev1.ClusterIPNone:
			bad("StatefulSet %s: Service %s is not headless (clusterIP: None)", st.Name, s.Name)
		case !matches(s.Spec.Selector, st.Spec.Template.Labels):
			bad("StatefulSet %s: its Service %s selects other pods", st.Name, s.Name)
		}
	}
	for _, pdb := range allOf[*policyv1.PodDisruptionBudget](objs) {
		found := false
		for _, w := range ws {
			found = found || (pdb.Spec.Selector != nil && matches(pdb.Spec.Selector.MatchLabels, w.template.Labels))
		}
		if !found {
			bad("PodDisruptionBudget %s: selects no pod template", pdb.Name)
		}
	}
	errs = append(errs, secretModes(objs)...)
	errs = append(errs, tlsRefs(objs)...)
	errs = append(errs, coordinatorProbes(objs)...)
	return errs
}

// containerPort resolves a probe's or Service's port, a name or a number,
// to a port the container declares.
func containerPort(c corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// checkLoomContainers: every container runs the loom image, whose
// entrypoint is /loom and which has no shell, so a container has no command
// and its args are a loom command line that loom parses.
func checkLoomContainers(t *testing.T, objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		for _, c := range w.spec().Containers {
			if imageRepo(c.Image) != "loom" {
				errs = append(errs, fmt.Errorf("%s %s: container %s: image %q, want loom", w.kind, w.name, c.Name, c.Image))
				continue
			}
			if len(c.Command) > 0 && !reflect.DeepEqual(c.Command, []string{"/loom"}) {
				errs = append(errs, fmt.Errorf("%s %s: container %s: command %q: the image has only /loom", w.kind, w.name, c.Name, c.Command))
			}
			env, _ := envValues(objs, c)
			args := make([]string, len(c.Args))
			for i, a := range c.Args {
				args[i], _ = expand(a, env)
			}
			if err := checkLoomArgs(t, args); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: container %s: %w", w.kind, w.name, c.Name, err))
			}
		}
	}
	return errs
}

func TestKubernetesCrossReferences(t *testing.T) {
	tr := loadTree(t)
	for _, dir := range []string{k8sDir, filepath.Join(k8sDir, "bootstrap")} {
		objs, _, err := tr.build(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, err := range crossRefs(objs) {
			t.Errorf("%s: %v", dir, err)
		}
		for _, err := range checkLoomContainers(t, objs) {
			t.Errorf("%s: %v", dir, err)
		}
	}
}

// ---------------------------------------------------------------------------
// The checks catch mistakes.

func TestCrossReferencesCatchMistakes(t *testing.T) {
	tr := loadTree(t)
	for _, tc := range []struct {
		name   string
		mutate func(objs []object)
		want   string
	}{
		{"service selector", func(objs []object) {
			only[*corev1.Service](t, objs, "loom").Spec.Selector["app.kubernetes.io/component"] = "coordinatr"
		}, "matches no pod template"},
		{"serviceName", func(objs []object) {
			only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.ServiceName = "loom"
		}, "not headless"},
		{"volume mount", func(objs []object) {
			c := container(t, &only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "worker")
			c.VolumeMounts[0].Name = "join-tokn"
		}, `mounts "join-tokn"`},
		{"secret", func(objs []object) {
			v := volume(&only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "join-token")
			v.Secret.SecretName = "loom-token"
		}, "no Secret loom-token"},
		{"env ref", func(objs []object) {
			c := container(t, &only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "worker")
			c.Args = append(c.Args, "--log-level", "$(LOG_LEVEL)")
		}, "$(LOG_LEVEL) is not an env var"},
		{"target port", func(objs []object) {
			only[*corev1.Service](t, objs, "loom").Spec.Ports[0].TargetPort.StrVal = "grcp"
		}, "no container port grcp"},
		{"probe port", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.ReadinessProbe.HTTPGet.Port = intstr.FromInt32(7071 + 1000)
		}, "probes port 8071, which it does not declare"},
		{"probe port name", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.LivenessProbe.HTTPGet.Port = intstr.FromString("metric")
		}, "probes port metric, which it does not declare"},
		{"probe on the gRPC port", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.ReadinessProbe.HTTPGet.Port = intstr.FromString("grpc")
		}, "readiness probe: port grpc (7070) is bound by neither --metrics-addr"},
		{"probe port unbound", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			for i, a := range c.Args {
				if a == "--metrics-addr" {
					c.Args[i+1] = "0.0.0.0:9101"
				}
			}
		}, "liveness probe: port metrics (9100) is bound by neither"},
		{"probe path", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.ReadinessProbe.HTTPGet.Path = "/healthz"
		}, `readiness probe: path "/healthz", want /readyz`},
		{"probe scheme", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.LivenessProbe.HTTPGet.Scheme = corev1.URISchemeHTTPS
		}, "scheme HTTPS"},
		{"grpc probe", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			c.ReadinessProbe.HTTPGet = nil
			c.ReadinessProbe.GRPC = &corev1.GRPCAction{Port: 7070}
		}, "the kubelet's gRPC probe has no client certificate"},
		{"tls env missing", func(objs []object) {
			c := container(t, &only[*batchv1.Job](t, objs, "loom-submit").Spec.Template.Spec, "launch")
			c.Env = slicesDeleteEnv(c.Env, "LOOM_TLS_KEY")
		}, "container launch (admin): no LOOM_TLS_KEY env var or --tls-key flag"},
		{"tls flag overrides env", func(objs []object) {
			c := container(t, &only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "worker")
			c.Args = append(c.Args, "--tls-cert", "/etc/loom/tls/coordinator.crt")
		}, "--tls-cert /etc/loom/tls/coordinator.crt: volume tls projects no file coordinator.crt"},
		{"tls role", func(objs []object) {
			spec := &only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec
			setEnv(container(t, spec, "worker"), "LOOM_TLS_KEY", "/etc/loom/tls/coordinator.key")
			volume(spec, "tls").Secret.Items[2] = corev1.KeyToPath{Key: "coordinator.key", Path: "coordinator.key"}
		}, "needs a worker certificate, but its LOOM_TLS_KEY /etc/loom/tls/coordinator.key is key coordinator.key of Secret loom-tls, want worker.key"},
		{"tls role behind a file name", func(objs []object) {
			// The file is named coordinator.crt, the Secret key behind it is
			// the worker's: the key counts.
			v := volume(&only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "tls")
			v.Secret.Items[1].Key = "worker.crt"
		}, "LOOM_TLS_CERT /etc/loom/tls/coordinator.crt is key worker.crt of Secret loom-tls, want coordinator.crt"},
		{"tls other role's key", func(objs []object) {
			volume(&only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "tls").Secret.Items = nil
		}, "volume tls puts key admin.key into a worker pod"},
		{"tls item missing", func(objs []object) {
			v := volume(&only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Spec, "tls")
			v.Secret.Items = v.Secret.Items[:2]
		}, "volume tls projects no file worker.key"},
		{"tls secret key", func(objs []object) {
			delete(only[*corev1.Secret](t, objs, "loom-tls").StringData, "admin.crt")
		}, "Secret loom-tls has no key admin.crt"},
		{"tls secret name", func(objs []object) {
			volume(&only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "tls").Secret.SecretName = "loom-join-token"
		}, "volume tls is not the Secret loom-tls"},
		{"tls mount", func(objs []object) {
			c := container(t, &only[*appsv1.StatefulSet](t, objs, "loom-coordinator").Spec.Template.Spec, "coordinator")
			setEnv(c, "LOOM_TLS_CA", "/etc/loom/ca.crt")
		}, "LOOM_TLS_CA /etc/loom/ca.crt is on no mount"},
		{"tls mount writable", func(objs []object) {
			c := container(t, &only[*batchv1.Job](t, objs, "loom-submit").Spec.Template.Spec, "launch")
			for i := range c.VolumeMounts {
				if c.VolumeMounts[i].Name == "tls" {
					c.VolumeMounts[i].ReadOnly = false
				}
			}
		}, "mount tls is not read-only"},
		{"secret unreadable", func(objs []object) {
			only[*batchv1.Job](t, objs, "loom-submit").Spec.Template.Spec.SecurityContext.FSGroup = nil
		}, "container launch (uid 65532) cannot read Secret volume tls (mode 0440"},
		{"prometheus port", func(objs []object) {
			only[*appsv1.Deployment](t, objs, "loom-worker").Spec.Template.Annotations["prometheus.io/port"] = "9401"
		}, `prometheus.io/port "9401"`},
		{"configmap key", func(objs []object) {
			only[*corev1.ConfigMap](t, objs, "loom-worker").Data = map[string]string{"jobid": "job-0001"}
		}, "no ConfigMap loom-worker with key job"},
	} {
		objs, _, err := tr.build(k8sDir)
		if err != nil {
			t.Fatal(err)
		}
		tc.mutate(objs)
		errs := crossRefs(objs)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%s: errors %v, want one containing %q", tc.name, errs, tc.want)
		}
	}
}

func slicesDeleteEnv(env []corev1.EnvVar, name string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range env {
		if e.Name != name {
			out = append(out, e)
		}
	}
	return out
}

func setEnv(c *corev1.Container, name, value string) {
	for i := range c.Env {
		if c.Env[i].Name == name {
			c.Env[i] = corev1.EnvVar{Name: name, Value: value}
			return
		}
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
}

func TestLoomArgsCheckCatchesMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"worker", "--coordinator", "loom:7070", "--job", "job-0001", "--adress", "10.0.0.1"}, "unknown flag: --adress"},
		{[]string{"coordinator", "--id", "c1", "--lease", "ten"}, "invalid argument"},
		{[]string{"coordinator", "--id", "c1", "--data-dir"}, "needs an argument"},
		{[]string{"coordinater", "--id", "c1"}, "not a loom command"},
	} {
		err := checkLoomArgs(t, tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	if err := checkLoomArgs(t, []string{"coordinator", "--id", "c1", "--data-dir", "/tmp/x", "--bootstrap"}); err != nil {
		t.Errorf("a valid command line: %v", err)
	}
}
