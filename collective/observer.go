package collective

import "time"

// Observer is told of each completed AllReduce of more than one rank (the
// metrics of a training process implement it). It is called on the
// goroutine that called AllReduce, before AllReduce returns, and must not
// block.
type Observer interface {
	// ObserveAllReduce: this rank sent bytes payload bytes (after
	// compression) in an all-reduce that took took. transport is how its
	// link to the next rank carried them: "shm" (shared memory: a rank on
	// the same host), "tcp", "tls" (TCP with TLS), or "mem" (MemTransport:
	// ranks in one process).
	ObserveAllReduce(transport string, bytes int64, took time.Duration)
}

// observed runs op, the ring of an AllReduce, and reports it to the
// observer if it succeeded. The bytes are the transport's payload counter
// across op; the caller holds c.mu, so they are op's alone.
func (c *Communicator) observed(op func() error) error {
	before := c.t.Stats()
	start := time.Now()
	if err := op(); err != nil {
		return err
	}
	took := time.Since(start)
	after := c.t.Stats()
	kind := c.kind
	if after.FramesSentShm > before.FramesSentShm {
		kind = "shm"
	}
	c.cfg.Observer.ObserveAllReduce(kind, int64(after.BytesSent-before.BytesSent), took)
	return nil
}
