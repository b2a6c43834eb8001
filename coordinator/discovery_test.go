package coordinator

import (
	"context"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
)

// startEtcd runs a real single-member etcd on loopback with random ports
// and a temp dir, stopped at the test's end. It returns the client address.
func startEtcd(t *testing.T) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "discovery-test"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ports := freeAddrs(t, 2)
	client, peer := ports[0], ports[1]
	cu, _ := url.Parse("http://" + client)
	pu, _ := url.Parse("http://" + peer)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("etcd not ready after 20s")
	}
	return client
}

// TestEtcdDiscovery: coordinators publish themselves and the leader; a
// client finds the leader through etcd; when the leader stops, the new
// leader is published.
func TestEtcdDiscovery(t *testing.T) {
	disc := "etcd://" + startEtcd(t) + "/loom-test"
	ctx := ctxT(t, 60*time.Second)
	tc := &TestCluster{t: t}
	t.Cleanup(tc.Close)
	first := NewTestServer(t, func(c *Config) { c.Discovery = disc })
	tc.Nodes = append(tc.Nodes, first)
	for _, id := range []string{"coord-1", "coord-2"} {
		cfg := TestConfig(t, id)
		cfg.Discovery = disc
		cfg.Join = []string{first.Addr()}
		s, err := Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		tc.Nodes = append(tc.Nodes, s)
	}
	leader := tc.Leader()
	var addrs []string
	waitFor(t, 10*time.Second, func() bool {
		var l string
		var err error
		l, addrs, err = api.Discover(ctx, disc)
		return err == nil && l == leader.Addr() && len(addrs) == 3
	})
	// A client given only the discovery URL works.
	resolved, err := api.ResolveAddrs(ctx, []string{disc, "10.9.9.9:7070"})
	if err != nil || len(resolved) != 4 || resolved[0] != leader.Addr() || resolved[3] != "10.9.9.9:7070" {
		t.Fatalf("ResolveAddrs: %v %v", resolved, err)
	}
	c := api.NewCoordinatorClient(Dial(t, addrs...))
	if _, err := c.SubmitJob(ctx, &api.SubmitJobRequest{Spec: &api.JobSpec{Name: "via-etcd", GlobalBatch: 4}}); err != nil {
		t.Fatal(err)
	}
	// A new node given only the discovery URL joins through it.
	cfg := TestConfig(t, "coord-3")
	cfg.Discovery = disc
	n3, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("join through discovery: %v", err)
	}
	tc.Nodes = append(tc.Nodes, n3)
	if st := leader.Status(); len(st.Members) != 4 {
		t.Fatalf("members after discovery join: %v", st.Members)
	}
	waitFor(t, 10*time.Second, func() bool { _, as, err := api.Discover(ctx, disc); return err == nil && len(as) == 4 })
	// Stop the leader: its keys are withdrawn and the new leader's published.
	for i, n := range tc.Nodes {
		if n == leader {
			tc.Stop(i)
		}
	}
	newLeader := tc.Leader()
	waitFor(t, 10*time.Second, func() bool {
		l, as, err := api.Discover(ctx, disc)
		return err == nil && l == newLeader.Addr() && len(as) == 3
	})
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, _, err := api.Discover(dctx, "etcd://"+freeAddr(t)+"/nothing-here"); err == nil {
		t.Fatal("discovery against a dead etcd succeeded")
	}
	if _, _, err := api.ParseDiscovery("http://x/y"); err == nil {
		t.Fatal("non-etcd discovery URL accepted")
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
