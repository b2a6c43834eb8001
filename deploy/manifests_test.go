// Shared by the checks of every deployment file: TestMain, the loom binary
// whose CLI parser checks each loom command line (and the role and mTLS
// settings such a command line implies), and strict decoding of the
// Kubernetes manifests and their kustomizations into API objects.

package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
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
