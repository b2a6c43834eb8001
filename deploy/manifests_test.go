package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/jobspec"
)

const k8sDir = "kubernetes"

// ---------------------------------------------------------------------------
// The loom binary: built once, its help and flag parsing are the reference
// for every loom command line in the deployment files.

var (
	loomOnce sync.Once
	loomBin  string
	loomDir  string
	loomErr  error
	subcmds  map[string]bool
)

func TestMain(m *testing.M) {
	code := m.Run()
	if loomDir != "" {
		_ = os.RemoveAll(loomDir)
	}
	os.Exit(code)
}

// loom builds cmd/loom (once per test binary) and returns its path.
func loom(t *testing.T) string {
	t.Helper()
	loomOnce.Do(func() {
		if loomDir, loomErr = os.MkdirTemp("", "loom-deploy-test-"); loomErr != nil {
			return
		}
		loomBin = filepath.Join(loomDir, "loom")
		out, err := exec.Command("go", "build", "-o", loomBin, "github.com/loomtrain/loom/cmd/loom").CombinedOutput()
		if err != nil {
			loomErr = fmt.Errorf("go build cmd/loom: %v\n%s", err, out)
			return
		}
		out, err = exec.Command(loomBin, "--help").CombinedOutput()
		if err != nil {
			loomErr = fmt.Errorf("loom --help: %v\n%s", err, out)
			return
		}
		subcmds = map[string]bool{}
		in := false
		for _, l := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(l, "Available Commands:"):
				in = true
			case in && strings.TrimSpace(l) == "":
				in = false
			case in:
				subcmds[strings.Fields(l)[0]] = true
			}
		}
		for _, want := range []string{"coordinator", "worker", "launch", "status"} {
			if !subcmds[want] {
				loomErr = fmt.Errorf("loom --help lists no %q command:\n%s", want, out)
			}
		}
	})
	if loomErr != nil {
		t.Fatal(loomErr)
	}
	return loomBin
}

// checkLoomArgs checks a loom command line (without the binary): args[0]
// must be a loom command, and `loom SUB --help REST...` must succeed, so
// cobra parses every flag and its value as the command itself would (an
// unknown flag, a missing value or one of the wrong type fails) and stops at
// --help before anything runs. Every --flag must also be in the help text.
func checkLoomArgs(t *testing.T, args []string) error {
	bin := loom(t)
	if len(args) == 0 {
		return errors.New("no loom command (empty args)")
	}
	if !subcmds[args[0]] {
		return fmt.Errorf("%q is not a loom command", args[0])
	}
	full := append([]string{args[0], "--help"}, args[1:]...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("loom %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	help := string(out)
	if !strings.Contains(help, "Usage:\n  loom "+args[0]) {
		return fmt.Errorf("loom %s --help printed no usage of %q:\n%s", args[0], args[0], help)
	}
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name := strings.SplitN(a, "=", 2)[0]
		if !strings.Contains(help, name+" ") {
			return fmt.Errorf("loom %s has no flag %s", args[0], name)
		}
	}
	return nil
}

// flags splits a loom command line's flags: "--name value" or "--name=value",
// and a flag followed by another (or nothing) as a bool ("true").
func flags(args []string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if k, v, ok := strings.Cut(a[2:], "="); ok {
			m[k] = v
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			m[a[2:]] = args[i+1]
			i++
			continue
		}
		m[a[2:]] = "true"
	}
	return m
}

// ---------------------------------------------------------------------------
// Strict decoding of Kubernetes manifests.

// object is one YAML document of a manifest file, decoded into its API type.
type object struct {
	file string
	doc  int
	obj  any // *corev1.Service, *appsv1.StatefulSet, ...
}

func (o object) String() string {
	m := meta(o.obj)
	return fmt.Sprintf("%s#%d %s/%s", o.file, o.doc, reflect.TypeOf(o.obj).Elem().Name(), m.Name)
}

// newObject returns a pointer to the Go type of apiVersion and kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "batch/v1 Job":
		return &batchv1.Job{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	}
	return nil, fmt.Errorf("unknown kind %q of apiVersion %q", kind, apiVersion)
}

func meta(o any) *metav1.ObjectMeta {
	return reflect.ValueOf(o).Elem().FieldByName("ObjectMeta").Addr().Interface().(*metav1.ObjectMeta)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeDocuments decodes every YAML document of a file strictly: YAML to
// JSON (duplicate keys fail), then encoding/json with DisallowUnknownFields
// into the type that apiVersion and kind name (unknown kinds fail), then a
// round trip that every key of the input must survive with its exact
// spelling (encoding/json matches field names case-insensitively; the API
// server does not). Comment-only documents are skipped.
func decodeDocuments(file string, data []byte) ([]object, error) {
	var out []object
	for i, part := range docSep.Split(string(data), -1) {
		j, err := yaml.YAMLToJSONStrict([]byte(part))
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		if string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(j, &tm); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			return nil, fmt.Errorf("%s: document %d (%s): %w", file, i, tm.Kind, err)
		}
		back, err := json.Marshal(obj)
		if err != nil {
			return nil, err
		}
		var in, rt any
		if err := json.Unmarshal(j, &in); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(back, &rt); err != nil {
			return nil, err
		}
		if err := sameKeys("", in, rt); err != nil {
			return nil, fmt.Errorf("%s: document %d (%s): %w", file, i, tm.Kind, err)
		}
		if meta(obj).Name == "" {
			return nil, fmt.Errorf("%s: document %d (%s): no metadata.name", file, i, tm.Kind)
		}
		out = append(out, object{file: file, doc: i, obj: obj})
	}
	return out, nil
}

// sameKeys reports a key of in that the decoded object rt does not hold.
func sameKeys(path string, in, rt any) error {
	switch in := in.(type) {
	case map[string]any:
		r, ok := rt.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: decoded as %T", path, rt)
		}
		for k, v := range in {
			rv, ok := r[k]
			if !ok {
				return fmt.Errorf("field %s.%s is not a field of the type (case?) or decodes to nothing", path, k)
			}
			if err := sameKeys(path+"."+k, v, rv); err != nil {
				return err
			}
		}
	case []any:
		r, ok := rt.([]any)
		if !ok || len(r) != len(in) {
			return fmt.Errorf("%s: list decoded as %v", path, rt)
		}
		for i := range in {
			if err := sameKeys(fmt.Sprintf("%s[%d]", path, i), in[i], r[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Kustomizations.

// kustomization is the part of kustomize's Kustomization these files use;
// decoded strictly, so any other field fails until it is added here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

// tree is deploy/kubernetes: its manifest files and kustomizations.
type tree struct {
	files map[string][]object       // manifest file (relative to deploy/) -> documents
	kusts map[string]*kustomization // directory -> its kustomization.yaml
}

func loadTree(t *testing.T) *tree {
	t.Helper()
	tr := &tree{files: map[string][]object{}, kusts: map[string]*kustomization{}}
	err := filepath.WalkDir(k8sDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(p); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if filepath.Base(p) == "kustomization.yaml" || filepath.Base(p) == "kustomization.yml" {
			var k kustomization
			if err := decodeStrict(data, &k); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
				return fmt.Errorf("%s: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", p, k.APIVersion, k.Kind)
			}
			tr.kusts[filepath.Dir(p)] = &k
			return nil
		}
		objs, err := decodeDocuments(p, data)
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return fmt.Errorf("%s: no Kubernetes object in it", p)
		}
		tr.files[p] = objs
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func decodeStrict(data []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// build resolves the kustomization in dir like kustomize does for the
// features used here: resources (files, or directories with their own
// kustomization), then the namespace, then strategic-merge patches (see
// applyPatch). It also returns every manifest file it read.
func (tr *tree) build(dir string) ([]object, []string, error) {
	k, ok := tr.kusts[dir]
	if !ok {
		return nil, nil, fmt.Errorf("%s: no kustomization.yaml", dir)
	}
	var objs []object
	var used []string
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		if st, err := os.Stat(p); err != nil {
			return nil, nil, fmt.Errorf("%s/kustomization.yaml: resource %s: %w", dir, r, err)
		} else if st.IsDir() {
			o, u, err := tr.build(p)
			if err != nil {
				return nil, nil, err
			}
			objs, used = append(objs, o...), append(used, u...)
			continue
		}
		o, ok := tr.files[p]
		if !ok {
			return nil, nil, fmt.Errorf("%s/kustomization.yaml: resource %s is not a manifest", dir, r)
		}
		for _, x := range o {
			if ns := meta(x.obj).Namespace; ns != "" {
				return nil, nil, fmt.Errorf("%s: namespace %q hard-coded: kustomization.yaml sets it", x, ns)
			}
			x.obj = deepCopy(x.obj)
			objs = append(objs, x)
		}
		used = append(used, p)
	}
	if k.Namespace != "" {
		for _, x := range objs {
			if _, isNS := x.obj.(*corev1.Namespace); !isNS {
				meta(x.obj).Namespace = k.Namespace
			}
		}
		if !hasObject(objs, func(n *corev1.Namespace) bool { return n.Name == k.Namespace }) {
			return nil, nil, fmt.Errorf("%s/kustomization.yaml: namespace %q is not created by its resources", dir, k.Namespace)
		}
	}
	for _, p := range k.Patches {
		f := filepath.Join(dir, p.Path)
		patch, ok := tr.files[f]
		if !ok {
			return nil, nil, fmt.Errorf("%s/kustomization.yaml: patch %s is not a manifest file", dir, p.Path)
		}
		for _, x := range patch {
			if err := applyPatch(objs, x); err != nil {
				return nil, nil, err
			}
		}
		used = append(used, f)
	}
	for _, img := range k.Images {
		found := false
		for _, w := range workloads(objs) {
			for _, c := range w.spec().Containers {
				found = found || imageRepo(c.Image) == img.Name
			}
		}
		if !found {
			return nil, nil, fmt.Errorf("%s/kustomization.yaml: images: no container uses image %q", dir, img.Name)
		}
	}
	return objs, used, nil
}

func deepCopy(o any) any {
	switch o := o.(type) {
	case *corev1.Namespace:
		return o.DeepCopy()
	case *corev1.Service:
		return o.DeepCopy()
	case *corev1.ConfigMap:
		return o.DeepCopy()
	case *corev1.Secret:
		return o.DeepCopy()
	case *appsv1.StatefulSet:
		return o.DeepCopy()
	case *appsv1.Deployment:
		return o.DeepCopy()
	case *batchv1.Job:
		return o.DeepCopy()
	case *policyv1.PodDisruptionBudget:
		return o.DeepCopy()
	}
	panic(fmt.Sprintf("deepCopy: %T", o))
}

// applyPatch applies a strategic-merge patch of a StatefulSet that sets only
// spec.replicas and containers' args (containers merge by name; a list of
// strings is replaced whole). A patch setting anything else fails, so this is
// exactly what kustomize does with it.
func applyPatch(objs []object, p object) error {
	ps, ok := p.obj.(*appsv1.StatefulSet)
	if !ok {
		return fmt.Errorf("%s: only StatefulSet patches are supported", p)
	}
	rest := ps.DeepCopy()
	rest.TypeMeta, rest.Name, rest.Spec.Replicas = metav1.TypeMeta{}, "", nil
	for i := range rest.Spec.Template.Spec.Containers {
		rest.Spec.Template.Spec.Containers[i].Name = ""
		rest.Spec.Template.Spec.Containers[i].Args = nil
	}
	rest.Spec.Template.Spec.Containers = slicesCompactZero(rest.Spec.Template.Spec.Containers)
	if !reflect.DeepEqual(*rest, appsv1.StatefulSet{}) {
		return fmt.Errorf("%s: the patch sets more than spec.replicas and containers' args: %+v", p, rest)
	}
	for _, x := range objs {
		s, ok := x.obj.(*appsv1.StatefulSet)
		if !ok || s.Name != ps.Name {
			continue
		}
		if ps.Spec.Replicas != nil {
			r := *ps.Spec.Replicas
			s.Spec.Replicas = &r
		}
		for _, pc := range ps.Spec.Template.Spec.Containers {
			found := false
			for i := range s.Spec.Template.Spec.Containers {
				if c := &s.Spec.Template.Spec.Containers[i]; c.Name == pc.Name {
					c.Args, found = append([]string(nil), pc.Args...), true
				}
			}
			if !found {
				return fmt.Errorf("%s: StatefulSet %s has no container %q", p, ps.Name, pc.Name)
			}
		}
		return nil
	}
	return fmt.Errorf("%s: patches no StatefulSet of the resources", p)
}

func slicesCompactZero(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		if !reflect.DeepEqual(c, corev1.Container{}) {
			out = append(out, c)
		}
	}
	return out
}

func hasObject[T any](objs []object, pred func(T) bool) bool {
	for _, x := range objs {
		if o, ok := x.obj.(T); ok && pred(o) {
			return true
		}
	}
	return false
}

func allOf[T any](objs []object) []T {
	var out []T
	for _, x := range objs {
		if o, ok := x.obj.(T); ok {
			out = append(out, o)
		}
	}
	return out
}

func imageRepo(image string) string {
	repo := image
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return repo
}

// ---------------------------------------------------------------------------
// Cross-references.

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
			ports := map[int32]bool{}
			for _, p := range c.Ports {
				ports[p.ContainerPort] = true
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if pr != nil && pr.GRPC != nil && !ports[pr.GRPC.Port] {
					bad("%s %s: container %s probes port %d, which it does not declare", w.kind, w.name, c.Name, pr.GRPC.Port)
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
	return errs
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
	// Native gRPC probes: liveness on service "", readiness on the
	// coordinator's leader-aware health service.
	lp, rp := c.LivenessProbe, c.ReadinessProbe
	if lp == nil || lp.GRPC == nil || fmt.Sprint(lp.GRPC.Port) != grpcPort || lp.GRPC.Service == nil || *lp.GRPC.Service != "" {
		t.Errorf("liveness probe %+v, want grpc port %s service \"\"", lp, grpcPort)
	}
	if rp == nil || rp.GRPC == nil || fmt.Sprint(rp.GRPC.Port) != grpcPort || rp.GRPC.Service == nil || *rp.GRPC.Service != coordinator.HealthService {
		t.Errorf("readiness probe %+v, want grpc port %s service %q", rp, grpcPort, coordinator.HealthService)
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
		{"              port: 7070\n              service: \"\"\n", "              port: 7070\n              servce: \"\"\n", `unknown field "servce"`},
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
			c.ReadinessProbe.GRPC.Port = 7071 + 1000
		}, "probes port 8071"},
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
	for _, want := range []string{"kubectl apply -k deploy/kubernetes/bootstrap", "kubectl apply -k deploy/kubernetes\n", "kubectl -n loom scale deployment/loom-worker", "loom status", "8080", "mTLS", "deploy/Dockerfile"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md does not mention %q", want)
		}
	}
}

// ---------------------------------------------------------------------------
// systemd units.

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

// ---------------------------------------------------------------------------
// Slurm.

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
}
