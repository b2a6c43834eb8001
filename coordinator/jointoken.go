package coordinator

import (
	"context"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
)

// joinTokens is what a worker must present to register: a token given
// in the config, and the tokens listed in a file (one per line), re-read
// when the file changes so that tokens rotate without a restart: add the
// new token, restart or start workers with it, remove the old one. Workers
// already registered keep their registration. Surrounding whitespace is
// not part of a token (files end in newlines; tokens never hold spaces).
type joinTokens struct {
	fixed string
	file  string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	listed  []string
}

func newJoinTokens(token, file string) *joinTokens {
	return &joinTokens{fixed: strings.TrimSpace(token), file: file}
}

// enabled reports whether registration needs a token.
func (j *joinTokens) enabled() bool { return j.fixed != "" || j.file != "" }

// tokens returns the tokens accepted now.
func (j *joinTokens) tokens() ([]string, error) {
	out := []string{}
	if j.fixed != "" {
		out = append(out, j.fixed)
	}
	if j.file == "" {
		return out, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	st, err := os.Stat(j.file)
	if err != nil {
		return nil, fmt.Errorf("join token file: %w", err)
	}
	if !st.ModTime().Equal(j.modTime) || st.Size() != j.size {
		b, err := os.ReadFile(j.file)
		if err != nil {
			return nil, fmt.Errorf("join token file: %w", err)
		}
		j.listed = j.listed[:0]
		for line := range strings.Lines(string(b)) {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				j.listed = append(j.listed, t)
			}
		}
		j.modTime, j.size = st.ModTime(), st.Size()
	}
	return append(out, j.listed...), nil
}

// check admits a registration whose metadata carries an accepted token.
func (j *joinTokens) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get(api.JoinTokenHeader)
	if len(got) == 0 || strings.TrimSpace(got[0]) == "" {
		return status.Error(codes.Unauthenticated, "this cluster admits workers with a join token: give loom worker --join-token-file FILE or LOOM_JOIN_TOKEN")
	}
	ok, err := j.tokens()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	presented := []byte(strings.TrimSpace(got[0]))
	for _, t := range ok {
		if subtle.ConstantTimeCompare(presented, []byte(t)) == 1 {
			return nil
		}
	}
	return status.Error(codes.PermissionDenied, "join token not accepted by this cluster (wrong, or rotated out)")
}
