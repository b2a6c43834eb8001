package device

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Options are the settings parsed from a device spec such as
// "cpu:threads=2,kernel=generic".
type Options map[string]string

// Int returns the integer option key, or def when it is absent.
func (o Options) Int(key string, def int) (int, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("device option %s=%q: not an integer", key, v)
	}
	return n, nil
}

// Factory opens a device from its options.
type Factory func(Options) (Device, error)

// Registry maps backend names to factories. The zero value is ready to use
// and safe for concurrent use.
type Registry struct {
	mu        sync.Mutex
	factories map[string]Factory
}

// Register adds a backend; registering a name twice is an error.
func (r *Registry) Register(name string, f Factory) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.factories == nil {
		r.factories = map[string]Factory{}
	}
	if _, dup := r.factories[name]; dup {
		return fmt.Errorf("device backend %q registered twice", name)
	}
	r.factories[name] = f
	return nil
}

// Names lists the registered backends, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open parses a spec "name[:key=value,...]" and opens that backend. The
// option slowdown=F applies to every backend (see Throttled).
func (r *Registry) Open(spec string) (Device, error) {
	name, opts, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	f := r.factories[name]
	r.mu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("unknown device %q (have %s)", name, strings.Join(r.Names(), ", "))
	}
	slow, err := takeSlowdown(opts)
	if err != nil {
		return nil, err
	}
	d, err := f(opts)
	if err != nil || slow == 1 {
		return d, err
	}
	return throttle(d, slow), nil
}

// ParseSpec splits "cpu:threads=2,kernel=avx2" into its name and options.
func ParseSpec(spec string) (string, Options, error) {
	name, rest, _ := strings.Cut(strings.TrimSpace(spec), ":")
	if name == "" {
		return "", nil, fmt.Errorf("empty device spec")
	}
	opts := Options{}
	if rest == "" {
		return name, opts, nil
	}
	for _, kv := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return "", nil, fmt.Errorf("device spec %q: option %q is not key=value", spec, kv)
		}
		opts[k] = v
	}
	return name, opts, nil
}
