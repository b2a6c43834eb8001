package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
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
	discoveryNodes  = "/nodes/"
	discoveryLeader = "/leader"
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

func newEtcdClient(raw string) (*clientv3.Client, string, error) {
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
	cli, prefix, err := newEtcdClient(raw)
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
		case k == prefix+discoveryLeader:
			leader = v
		case strings.HasPrefix(k, prefix+discoveryNodes):
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

// publisher keeps this node's discovery keys alive in etcd.
type publisher struct {
	s      *Server
	cli    *clientv3.Client
	prefix string
	mu     sync.Mutex
	lease  clientv3.LeaseID // guarded by mu
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startPublisher grants a lease, publishes the node key and keeps the lease
// alive until close. If etcd loses the lease (e.g. a long partition) it
// grants a new one and republishes.
func startPublisher(ctx context.Context, s *Server) (*publisher, error) {
	cli, prefix, err := newEtcdClient(s.cfg.Discovery)
	if err != nil {
		return nil, err
	}
	p := &publisher{s: s, cli: cli, prefix: prefix}
	ctx, p.cancel = context.WithCancel(ctx)
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.publish(gctx); err != nil {
		p.cancel()
		_ = cli.Close()
		return nil, err
	}
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.keepAlive(ctx) }()
	return p, nil
}

func (p *publisher) publish(ctx context.Context) error {
	g, err := p.cli.Grant(ctx, DiscoveryTTL)
	if err != nil {
		return fmt.Errorf("discovery: grant lease: %w", err)
	}
	p.mu.Lock()
	p.lease = g.ID
	p.mu.Unlock()
	if _, err := p.cli.Put(ctx, p.prefix+discoveryNodes+p.s.cfg.NodeID, p.s.Addr(), clientv3.WithLease(g.ID)); err != nil {
		return fmt.Errorf("discovery: publish node: %w", err)
	}
	if p.s.IsLeader() {
		p.setLeader(ctx, true)
	}
	return nil
}

func (p *publisher) keepAlive(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := p.cli.KeepAlive(ctx, p.leaseID())
		if err == nil {
			for range ch { // drained until the lease is lost or ctx ends
			}
		}
		if ctx.Err() != nil {
			return
		}
		p.s.log.Warn("discovery lease lost; republishing", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := p.publish(gctx); err != nil {
			p.s.log.Warn("discovery republish", zap.Error(err))
		}
		cancel()
	}
}

func (p *publisher) leaseID() clientv3.LeaseID {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lease
}

// setLeader publishes (or withdraws, if it is still ours) the leader key.
func (p *publisher) setLeader(ctx context.Context, leader bool) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	key, me := p.prefix+discoveryLeader, p.s.Addr()
	var err error
	if leader {
		_, err = p.cli.Put(ctx, key, me, clientv3.WithLease(p.leaseID()))
	} else {
		_, err = p.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", me)).Then(clientv3.OpDelete(key)).Commit()
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		p.s.log.Warn("discovery leader key", zap.Bool("leader", leader), zap.Error(err))
	}
}

// close withdraws the node's keys (revoking the lease) and stops.
func (p *publisher) close() {
	p.cancel()
	p.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = p.cli.Revoke(ctx, p.leaseID())
	_ = p.cli.Close()
}
