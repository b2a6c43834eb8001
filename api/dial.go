package api

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// retryServiceConfig balances over every coordinator address and retries a
// call that failed with UNAVAILABLE (a node died or is electing) on another
// address with backoff, for about 5 s in all. Writes may be retried after a
// node died mid-call; the coordinator's write handlers are written so that a
// retried register/heartbeat/progress/commit is refused or harmless.
const retryServiceConfig = `{
  "loadBalancingConfig": [{"round_robin":{}}],
  "methodConfig": [{
    "name": [{"service": "loom.v1.Coordinator"}, {"service": "loom.v1.Cluster"}],
    "waitForReady": true,
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2.5,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

var schemeSeq atomic.Uint64

// Dial opens one client connection spread over every coordinator address in
// addrs ("host:port", or one comma-separated string). Any coordinator
// answers: followers forward writes to the leader. Calls wait for a ready
// connection up to their context deadline, so callers must set one.
// Extra options are appended (e.g. TLS credentials replace insecure ones).
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	var list []string
	for _, a := range addrs {
		for _, p := range strings.Split(a, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
	}
	if len(list) == 0 {
		return nil, errors.New("api: no coordinator address given")
	}
	// A private scheme per connection: the manual resolver is registered on
	// the connection only, never globally.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("loom%d", schemeSeq.Add(1)))
	state := resolver.State{}
	for _, a := range list {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(retryServiceConfig),
	}, opts...)
	return grpc.NewClient(r.Scheme()+":///coordinators", all...)
}
