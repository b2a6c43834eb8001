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
	// ranks in one process). rate is the bytes/s this rank moved once
	// every rank had started: from its first all-gather payload (a sum of
	// every rank's part) to the end, the bytes of the units it received
	// in that time over that time, so that it measures the link (or the
	// reduction), not the wait for the rank that started last; 0 when the
	// all-reduce was too short to tell.
	ObserveAllReduce(transport string, bytes int64, took time.Duration, rate float64)
}

// observed runs op, the ring of an AllReduce, and reports it to the
// observer if it succeeded. The bytes are the transport's payload counter
// across op; the caller holds c.mu, so they are op's alone.
func (c *Communicator) observed(op func() error) error {
	before := c.t.Stats()
	start := time.Now()
	c.gatherFrom = time.Time{}
	if err := op(); err != nil {
		return err
	}
	end := time.Now()
	took := end.Sub(start)
	after := c.t.Stats()
	kind := c.kind
	if after.FramesSentShm > before.FramesSentShm {
		kind = "shm"
	}
	bytes := int64(after.BytesSent - before.BytesSent)
	var rate float64
	if units := c.ready.Load(); !c.gatherFrom.IsZero() && units > c.gatherAt {
		if d := end.Sub(c.gatherFrom).Seconds(); d > 0 {
			rate = float64(bytes) * float64(units-c.gatherAt) / float64(units) / d
		}
	}
	c.cfg.Observer.ObserveAllReduce(kind, bytes, took, rate)
	return nil
}
