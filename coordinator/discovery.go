package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// Discovery: the key layout and the client side (api.Discover,
// api.ResolveAddrs) live in package api so that workers can use them; this
// file is the coordinator's side, which keeps the keys alive.

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
	cli, prefix, err := api.NewEtcdClient(s.cfg.Discovery)
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
	g, err := p.cli.Grant(ctx, api.DiscoveryTTL)
	if err != nil {
		return fmt.Errorf("discovery: grant lease: %w", err)
	}
	p.mu.Lock()
	p.lease = g.ID
	p.mu.Unlock()
	if _, err := p.cli.Put(ctx, p.prefix+api.DiscoveryNodes+p.s.cfg.NodeID, p.s.Addr(), clientv3.WithLease(g.ID)); err != nil {
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
	key, me := p.prefix+api.DiscoveryLeader, p.s.Addr()
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
