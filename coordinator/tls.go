package coordinator

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/pki"
)

// With Config.TLS set, every link of a coordinator is mutual TLS:
//   - the gRPC API admits any certificate of the cluster's CA at the TLS
//     layer, and then each call checks the caller's role (authorize): a
//     worker certificate may make the calls a worker makes and no more;
//     admin and coordinator certificates may make every call;
//   - Raft admits coordinator certificates only (tlsStream);
//   - the calls this node makes to other coordinators (forwarding a write
//     to the leader, joining) present its certificate and admit only
//     coordinator certificates on the other end (dialOptions).
//
// An admin's or a forwarding coordinator's call is authorised where it
// first arrives; the leader sees the forwarding coordinator's certificate.

// workerMethods are the calls a worker certificate may make: a worker's own
// registration, lease, plan, progress, failures and checkpoints, and the job
// it trains. Listing jobs or workers (with their addresses), submitting,
// cancelling, draining and changing the membership need an admin.
var workerMethods = map[string]bool{
	api.Coordinator_RegisterWorker_FullMethodName:   true,
	api.Coordinator_Heartbeat_FullMethodName:        true,
	api.Coordinator_DeregisterWorker_FullMethodName: true,
	api.Coordinator_ReportFailure_FullMethodName:    true,
	api.Coordinator_WatchPlan_FullMethodName:        true,
	api.Coordinator_ReportProgress_FullMethodName:   true,
	api.Coordinator_CommitCheckpoint_FullMethodName: true,
	api.Coordinator_GetJob_FullMethodName:           true,
	healthpb.Health_Check_FullMethodName:            true,
	healthpb.Health_Watch_FullMethodName:            true,
	healthpb.Health_List_FullMethodName:             true,
}

// authorize admits a call by the role of the caller's certificate; without
// TLS every call is admitted.
func (s *Server) authorize(ctx context.Context, method string) error {
	if s.cfg.TLS == nil {
		return nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer on this call")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return status.Error(codes.Unauthenticated, "this cluster requires mTLS: give --tls-ca, --tls-cert and --tls-key (loom certs)")
	}
	role, name, err := pki.RoleOf(info.State.PeerCertificates[0])
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	if role == pki.RoleAdmin || role == pki.RoleCoordinator || role == pki.RoleWorker && workerMethods[method] {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "a %s certificate (%s) may not call %s: that needs an admin certificate (loom certs issue admin NAME)",
		role, name, path.Base(method))
}

func (s *Server) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// serverOptions are the gRPC server's keepalive policy, credentials and
// interceptors.
func (s *Server) serverOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		api.ServerKeepalive(),
		grpc.ChainUnaryInterceptor(s.authorizeUnary, s.fwd.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.authorizeStream),
	}
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.cfg.TLS.Config())))
	}
	return opts
}

// dialOptions are the credentials and keepalive of this node's calls to
// other coordinators.
func (s *Server) dialOptions() []grpc.DialOption {
	creds := insecure.NewCredentials()
	if s.cfg.TLS != nil {
		creds = credentials.NewTLS(s.cfg.TLS.Config(pki.RoleCoordinator))
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(creds), api.ClientKeepalive()}
}

// tlsStream is a raft.StreamLayer that carries Raft between coordinators
// over mutual TLS. An accepted connection runs its handshake on Raft's
// first read, in the goroutine that serves it, so a slow or refused peer
// never holds up the accept loop; a refused one is logged by Raft with the
// TLS error.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	cfg       *tls.Config
}

func newTLSStream(bind string, advertise net.Addr, cfg *tls.Config) (*tlsStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &tlsStream{Listener: tls.NewListener(ln, cfg), advertise: advertise, cfg: cfg}, nil
}

// Addr implements net.Listener: the advertise address when there is one.
func (t *tlsStream) Addr() net.Addr {
	if t.advertise != nil {
		return t.advertise
	}
	return t.Listener.Addr()
}

// Dial implements raft.StreamLayer; timeout bounds the connection and the
// handshake together.
func (t *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: t.cfg}
	c, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft over TLS to %s: %w", address, err)
	}
	return c, nil
}
