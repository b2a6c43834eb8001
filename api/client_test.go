package api

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorReasonRoundTrip(t *testing.T) {
	err := NewError(codes.FailedPrecondition, ReasonStaleGeneration, "generation 3, current 4", map[string]string{"current": "4"})
	if ReasonOf(err) != ReasonStaleGeneration || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("got %v / %q", status.Code(err), ReasonOf(err))
	}
	if ErrorInfoOf(fmt.Errorf("wrapped: %w", err)).GetMetadata()["current"] != "4" {
		t.Fatal("metadata lost through wrapping")
	}
	if ReasonOf(nil) != "" || ReasonOf(fmt.Errorf("plain")) != "" || ReasonOf(status.Error(codes.Internal, "x")) != "" {
		t.Fatal("reason invented for an error without one")
	}
}

// stubCluster answers ClusterStatus with its node id.
type stubCluster struct {
	UnimplementedClusterServer
	id string
}

func (s stubCluster) ClusterStatus(context.Context, *ClusterStatusRequest) (*ClusterStatusResponse, error) {
	return &ClusterStatusResponse{NodeId: s.id}, nil
}

// TestDialSkipsDeadAddress: with one dead and one live address (given as
// one comma-separated string) every call reaches the live one.
func TestDialSkipsDeadAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	RegisterClusterServer(g, stubCluster{id: "live"})
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()

	conn, err := Dial([]string{deadAddr + "," + lis.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := NewClusterClient(conn)
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := c.ClusterStatus(ctx, &ClusterStatusRequest{})
		cancel()
		if err != nil || r.NodeId != "live" {
			t.Fatalf("call %d: %v %v", i, r, err)
		}
	}
	if _, err := Dial([]string{" , "}); err == nil {
		t.Fatal("Dial with no address succeeded")
	}
}
