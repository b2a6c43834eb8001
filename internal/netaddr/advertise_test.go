package netaddr

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestAdvertise(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	for _, tc := range []struct {
		bound, advertise, want, err string
	}{
		{"127.0.0.1:7070", "", "127.0.0.1:7070", ""},
		{"127.0.0.1:7070", "10.0.0.5", "10.0.0.5:7070", ""},
		{"127.0.0.1:7070", "node-3.loom:9000", "node-3.loom:9000", ""},
		{"127.0.0.1:7070", "node-3.loom:0", "node-3.loom:7070", ""},
		{"127.0.0.1:7070", "[fd00::1]:0", "[fd00::1]:7070", ""},
		{"127.0.0.1:7070", "0.0.0.0", "", "is not an address peers can dial"},
		{"127.0.0.1:7070", ":9000", "", "no host"},
		{"127.0.0.1:7070", "h:port", "", `bad port "port"`},
	} {
		got, err := Advertise(tcp(tc.bound), tc.advertise)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Advertise(%s, %q) = %q, %v; want error %q", tc.bound, tc.advertise, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Advertise(%s, %q) = %q, %v; want %q", tc.bound, tc.advertise, got, err, tc.want)
		}
	}
}

// A listener on every interface is advertised at a routable address of
// this host, with its port, and that address reaches it; on a host with
// only loopback, Advertise says to give one.
func TestAdvertiseUnspecifiedIsDialable(t *testing.T) {
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ip, err := Routable()
	got, aerr := Advertise(ln.Addr(), "")
	if errors.Is(err, ErrNoRoutable) {
		if !errors.Is(aerr, ErrNoRoutable) {
			t.Fatalf("no routable address, yet Advertise(%s) = %q, %v", ln.Addr(), got, aerr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	err = aerr
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if err != nil || got != net.JoinHostPort(ip.String(), port) {
		t.Fatalf("Advertise(%s) = %q, %v", ln.Addr(), got, err)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", got)
	if err != nil {
		t.Fatalf("dial the advertised %s: %v", got, err)
	}
	c.Close()
}
