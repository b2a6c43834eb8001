package collective

import (
	"context"
	"fmt"
)

// Point-to-point messages, for pipeline parallelism (activations forward,
// their gradients backward). A message is b's elements, sent as frames of at
// most Config.ChunkBytes; the receiver must pass a buffer of the same dtype
// and length (a mismatch fails with ErrMismatch rather than truncating).
// Messages between a pair of ranks arrive in the order they were sent. Like
// collectives, a failed Send or Recv closes the Communicator.

// Send sends b to rank to and returns once the data is handed to the link
// (for TCP: copied into the kernel; it does not wait for Recv).
func (c *Communicator) Send(ctx context.Context, to int, b Buffer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.p2pCheck(ctx, to, b); err != nil {
		return err
	}
	h := Header{Kind: KindData, Op: OpP2P, DType: b.DType, Seq: c.p2pSend[to]}
	c.p2pSend[to]++
	step := max(1, c.cfg.ChunkBytes/b.DType.Size())
	for lo := 0; ; lo += step {
		hi := min(lo+step, b.Len())
		if err := c.t.Send(ctx, to, h, b.bytes(lo, hi)); err != nil {
			return c.finish(OpP2P, err)
		}
		if hi == b.Len() {
			return nil
		}
	}
}

// Recv receives into b the next message rank from sent to this rank.
func (c *Communicator) Recv(ctx context.Context, from int, b Buffer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.p2pCheck(ctx, from, b); err != nil {
		return err
	}
	h := Header{Kind: KindData, Op: OpP2P, DType: b.DType, Seq: c.p2pRecv[from]}
	c.p2pRecv[from]++
	step := max(1, c.cfg.ChunkBytes/b.DType.Size())
	for lo := 0; ; lo += step {
		hi := min(lo+step, b.Len())
		if err := c.t.Recv(ctx, from, h, b.bytes(lo, hi)); err != nil {
			return c.finish(OpP2P, err)
		}
		if hi == b.Len() {
			return nil
		}
	}
}

func (c *Communicator) p2pCheck(ctx context.Context, peer int, b Buffer) error {
	if err := c.begin(ctx, OpP2P, b); err != nil {
		return err
	}
	if peer < 0 || peer >= c.n || peer == c.cfg.Rank {
		return fmt.Errorf("collective: p2p: %w: peer %d (self %d, size %d)", ErrConfig, peer, c.cfg.Rank, c.n)
	}
	return nil
}
