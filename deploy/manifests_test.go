package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
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
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

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

// loomRole is the certificate role a loom command line runs with: loom
// coordinator a coordinator's, loom worker a worker's; every other command
// (launch, status, coordinator members, ...) is a client and needs an
// admin's.
func loomRole(args []string) string {
	if len(args) > 0 && (args[0] == "coordinator" || args[0] == "worker") &&
		(len(args) == 1 || strings.HasPrefix(args[1], "-")) {
		return args[0]
	}
	return "admin"
}

// tlsSetting is one of the three mTLS settings: its flag, its environment
// variable (the flag's default), and the key of the Secret loom-tls that a
// container of role must read through it.
type tlsSetting struct{ flag, env, suffix string }

var tlsSettings = []tlsSetting{
	{"tls-ca", "LOOM_TLS_CA", ""},
	{"tls-cert", "LOOM_TLS_CERT", ".crt"},
	{"tls-key", "LOOM_TLS_KEY", ".key"},
}

func (s tlsSetting) key(role string) string {
	if s.suffix == "" {
		return "ca.crt"
	}
	return role + s.suffix
}

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

// ---------------------------------------------------------------------------
// docker-compose.

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

func TestLoomRole(t *testing.T) {
	for want, args := range map[string][]string{
		"coordinator": {"coordinator", "--id", "c1"},
		"worker":      {"worker", "--job", "job-0001"},
		"admin":       {"coordinator", "members", "--coordinator", "c1:7070"},
	} {
		if got := loomRole(args); got != want {
			t.Errorf("loomRole(%q) = %s, want %s", args, got, want)
		}
	}
	for _, args := range [][]string{{"launch", "job.yaml"}, {"status"}, {"workers", "drain", "w1"}, nil} {
		if got := loomRole(args); got != "admin" {
			t.Errorf("loomRole(%q) = %s, want admin", args, got)
		}
	}
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
