package coordinator

import (
	"context"
	"fmt"
	"time"
)

// StartEmbedded starts a single-node coordinator that bootstraps itself and
// returns once it leads and has recorded the cluster id, so a write right
// after it returns succeeds. This is what `loom launch` runs when no
// --coordinator is given; dial Server.Addr() in the same process or from
// local worker processes. Bootstrap and Join in cfg are overridden. With an
// empty cfg.DataDir the state lives in memory only. Close the server when
// done.
func StartEmbedded(ctx context.Context, cfg Config) (*Server, error) {
	cfg.Bootstrap, cfg.Join = true, nil
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("coordinator: embedded start: %w", err)
	}
	return s, nil
}

// waitReady waits until this node leads and its leader duties have
// recorded the cluster id and its own addresses.
func (s *Server) waitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.IsLeader() && s.fsm.ClusterID() != "" {
			if _, addr := s.Leader(); addr != "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}
