// Package netaddr decides the address a listener is reached at. A process
// binds one address (often 0.0.0.0 in a container) and must publish
// another that its peers can dial: the advertise address.
package netaddr

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// Advertise returns the host:port peers dial to reach a listener bound at
// bound. advertise, if not empty, is what the operator gave (a host, or
// host:port; a missing or zero port is the bound one). Otherwise a
// listener bound to a specific host is reached there, and one bound to
// every interface (0.0.0.0, ::, or an empty host) at the host's first
// routable address (Routable).
func Advertise(bound net.Addr, advertise string) (string, error) {
	host, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return "", fmt.Errorf("bound address %s: %w", bound, err)
	}
	if advertise != "" {
		h, p, err := net.SplitHostPort(advertise)
		if err != nil { // a bare host
			h, p = advertise, ""
		}
		if h == "" {
			return "", fmt.Errorf("advertise address %q: no host", advertise)
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			return "", fmt.Errorf("advertise address %q: %s is not an address peers can dial", advertise, h)
		}
		if p == "" || p == "0" {
			p = port
		} else if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return "", fmt.Errorf("advertise address %q: bad port %q", advertise, p)
		}
		return net.JoinHostPort(h, p), nil
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return bound.String(), nil
	}
	ip, err := Routable()
	if err != nil {
		return "", fmt.Errorf("bound to %s: %w", bound, err)
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// ErrNoRoutable is returned when the host has no up, non-loopback
// interface with a unicast address.
var ErrNoRoutable = errors.New("no routable address on this host (only loopback): give an advertise address")

// Routable returns the host's first global unicast IPv4 address of an
// interface that is up and not loopback (IPv6 if it has no IPv4), in the
// order the system lists interfaces.
func Routable() (net.IP, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var v6 net.IP
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || !n.IP.IsGlobalUnicast() {
				continue
			}
			if v4 := n.IP.To4(); v4 != nil {
				return v4, nil
			}
			if v6 == nil {
				v6 = n.IP
			}
		}
	}
	if v6 != nil {
		return v6, nil
	}
	return nil, ErrNoRoutable
}
