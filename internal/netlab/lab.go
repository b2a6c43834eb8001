// Package netlab builds several "hosts" on one Linux machine for tests and
// benchmarks of distributed code: each host is a network namespace with its
// own address on one private bridge, so processes on different hosts talk
// over a real (virtual) link that can be cut, while each host's processes
// can be frozen. It shells out to ip(8) and needs root.
//
// Layout of a lab with prefix P (unique per process and lab, see names.go)
// on the subnet 10.232.X.0/24:
//
//	namespace P          the switch: bridge "br0", one port per host ("p0",
//	                     "p1", ...), and "ctl" to this process's namespace
//	namespace P-NAME     one host: "eth0" (the other end of its port) at
//	                     10.232.X.(10+i), and lo
//	link Pc              in the caller's namespace, at 10.232.X.1: the
//	                     caller reaches every host directly
//
// The bridge lives in its own namespace so that the machine's firewall
// (a FORWARD policy of DROP with br_netfilter, as Docker leaves it) never
// sees the lab's traffic, and nothing in the caller's namespace changes but
// one link and its route. Cutting a host's link sets its switch port down:
// the host's eth0 loses carrier and nothing crosses, in either direction, as
// when a cable is pulled; established connections neither reset nor close.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Lab is a set of hosts on one bridge. Create it with New and always Close
// it: Close is what removes the namespaces and links from the machine. Its
// methods are safe for concurrent use.
type Lab struct {
	prefix string
	subnet int // X of 10.232.X.0/24
	hosts  []*Host

	mu     sync.Mutex
	nss    []string // namespaces created, in order
	links  []string // links created in the caller's namespace
	closed bool
}

var hostName = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// New creates one host per name (1 to 8 lower-case letters or digits,
// distinct), each with its own address, all on one bridge reachable from
// the caller's namespace. It fails with ErrNotRoot or ErrNoIP (wrapped) when
// the machine does not allow it; on any failure whatever it had created is
// removed again. Leftovers of labs whose process died without Close are
// removed first.
func New(ctx context.Context, names ...string) (l *Lab, err error) {
	if err := preflight(); err != nil {
		return nil, err
	}
	if len(names) == 0 || len(names) > 200 {
		return nil, fmt.Errorf("netlab: %d hosts: want 1 to 200", len(names))
	}
	seen := map[string]bool{}
	for _, n := range names {
		if !hostName.MatchString(n) || seen[n] {
			return nil, fmt.Errorf("netlab: host name %q: want 1 to 8 lower-case letters or digits, each name once", n)
		}
		seen[n] = true
	}
	unlock, err := lockAllocation()
	if err != nil {
		return nil, err
	}
	defer unlock()
	sweepStale(ctx)
	l = &Lab{prefix: newPrefix()}
	if l.subnet, err = freeSubnet(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	if err := l.addNS(ctx, l.prefix); err != nil {
		return l, err
	}
	sw := []string{"-n", l.prefix}
	if err := l.run(ctx, append(sw, "link", "add", "name", "br0", "type", "bridge")...); err != nil {
		return l, err
	}
	if err := l.run(ctx, append(sw, "link", "set", "br0", "up")...); err != nil {
		return l, err
	}
	for i, name := range names {
		h := &Host{Name: name, NS: l.prefix + "-" + name, IP: fmt.Sprintf("10.232.%d.%d", l.subnet, 10+i), lab: l, port: fmt.Sprintf("p%d", i)}
		if err := l.addNS(ctx, h.NS); err != nil {
			return l, err
		}
		l.hosts = append(l.hosts, h)
		in := []string{"-n", h.NS}
		for _, args := range [][]string{
			{"link", "add", "name", h.port, "netns", l.prefix, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			append(sw, "link", "set", h.port, "master", "br0", "up"),
			append(in, "addr", "add", h.IP+"/24", "dev", "eth0"),
			append(in, "link", "set", "eth0", "up"),
		} {
			if err := l.run(ctx, args...); err != nil {
				return l, err
			}
		}
	}
	ctl := l.prefix + "c"
	if err := l.run(ctx, "link", "add", "name", ctl, "type", "veth", "peer", "name", "ctl", "netns", l.prefix); err != nil {
		return l, err
	}
	l.mu.Lock()
	l.links = append(l.links, ctl)
	l.mu.Unlock()
	for _, args := range [][]string{
		append(sw, "link", "set", "ctl", "master", "br0", "up"),
		{"addr", "add", fmt.Sprintf("10.232.%d.1/24", l.subnet), "dev", ctl},
		{"link", "set", ctl, "up"},
	} {
		if err := l.run(ctx, args...); err != nil {
			return l, err
		}
	}
	return l, nil
}

// addNS creates namespace name with its loopback up, and records it for
// Close.
func (l *Lab) addNS(ctx context.Context, name string) error {
	if err := l.run(ctx, "netns", "add", name); err != nil {
		return err
	}
	l.mu.Lock()
	l.nss = append(l.nss, name)
	l.mu.Unlock()
	return l.run(ctx, "-n", name, "link", "set", "lo", "up")
}

func (l *Lab) run(ctx context.Context, args ...string) error {
	_, err := ipCmd(ctx, args...)
	return err
}

// Hosts returns the hosts in the order of New's names.
func (l *Lab) Hosts() []*Host { return l.hosts }

// Host returns the host called name, or nil.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// ControllerIP is the caller's own address on the lab's bridge: a listener
// the caller binds there is reachable from every host.
func (l *Lab) ControllerIP() string { return fmt.Sprintf("10.232.%d.1", l.subnet) }

// Close kills every process in the lab's hosts (whoever started it,
// frozen or not), then deletes the link in the caller's namespace and every
// namespace, the bridge and the host links with them. It is idempotent,
// and after a failed New removes what New had created. The error joins
// every step that failed; Close still does the others.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	ctx := context.Background()
	var errs []error
	for _, ns := range l.nss {
		if err := killAll(ctx, ns, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, link := range l.links {
		if _, err := ipCmd(ctx, "link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	for i := len(l.nss) - 1; i >= 0; i-- {
		if _, err := ipCmd(ctx, "netns", "del", l.nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
