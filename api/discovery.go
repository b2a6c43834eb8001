package api

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Discovery keys under the prefix of an etcd:// URL:
//
//	<prefix>/nodes/<node id> = <grpc addr>   one per live coordinator
//	<prefix>/leader          = <grpc addr>   the current leader
//
// Both are attached to the publishing node's etcd lease (DiscoveryTTL), so a
// dead node's keys vanish on their own; a new leader overwrites the leader
// key as soon as it is elected.
const (
	DiscoveryNodes  = "/nodes/"
	DiscoveryLeader = "/leader"
	// DiscoveryTTL is the etcd lease of published keys, in seconds.
	DiscoveryTTL = 5
)

// ParseDiscovery splits "etcd://host:port[,host:port]/prefix" into etcd
// endpoints and a key prefix (no trailing slash, "/loom" if empty).
func ParseDiscovery(raw string) (endpoints []string, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("discovery %q: %w", raw, err)
	}
	if u.Scheme != "etcd" || u.Host == "" {
		return nil, "", fmt.Errorf("discovery %q: want etcd://host:port[,host:port]/prefix", raw)
	}
	for _, h := range strings.Split(u.Host, ",") {
		endpoints = append(endpoints, "http://"+h)
	}
	prefix = strings.TrimRight(u.Path, "/")
	if prefix == "" {
		prefix = "/loom"
	}
	return endpoints, prefix, nil
}

// NewEtcdClient connects to the etcd of a discovery URL and returns the
// client and the key prefix. The caller closes the client.
func NewEtcdClient(raw string) (*clientv3.Client, string, error) {
	eps, prefix, err := ParseDiscovery(raw)
	if err != nil {
		return nil, "", err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, "", fmt.Errorf("discovery: etcd %v: %w", eps, err)
	}
	return cli, prefix, nil
}

// Discover reads the coordinators published under an etcd:// URL. It
// returns the leader's gRPC address ("" while none is published) and every
// live coordinator's address, leader first; clients pass the list to
// api.Dial. It gives up after 5 s (or ctx) when etcd does not answer.
func Discover(ctx context.Context, raw string) (leader string, addrs []string, err error) {
	cli, prefix, err := NewEtcdClient(raw)
	if err != nil {
		return "", nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return "", nil, fmt.Errorf("discovery: read %s: %w", prefix, err)
	}
	for _, kv := range resp.Kvs {
		k, v := string(kv.Key), string(kv.Value)
		switch {
		case k == prefix+DiscoveryLeader:
			leader = v
		case strings.HasPrefix(k, prefix+DiscoveryNodes):
			addrs = append(addrs, v)
		}
	}
	sort.Strings(addrs)
	if leader != "" {
		out := []string{leader}
		for _, a := range addrs {
			if a != leader {
				out = append(out, a)
			}
		}
		addrs = out
	}
	if len(addrs) == 0 {
		return "", nil, fmt.Errorf("discovery: no coordinator published under %s", raw)
	}
	return leader, addrs, nil
}

// ResolveAddrs expands every "etcd://..." entry of specs into the
// coordinators published there (leader first) and keeps every other entry
// (host:port, or comma-separated host:ports) as is. Pass the result to Dial.
func ResolveAddrs(ctx context.Context, specs []string) ([]string, error) {
	var out []string
	for _, s := range specs {
		if !strings.HasPrefix(s, "etcd://") {
			out = append(out, s)
			continue
		}
		_, addrs, err := Discover(ctx, s)
		if err != nil {
			return nil, err
		}
		out = append(out, addrs...)
	}
	return out, nil
}
