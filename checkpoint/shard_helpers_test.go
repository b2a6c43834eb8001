package checkpoint

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gptState is a GPT-shaped state: embeddings, layers of two d×d matrices
// and a norm, a final norm; AdamW m and v per parameter, named
// "<param>.m" and "<param>.v", in parameter order.
func gptState(job string, step, layers, d int) *State {
	s := &State{Job: job, ConfigHash: "h", Config: "model: gpt\n", Step: step, Epoch: 1, SamplerEpoch: 1, SamplerOffset: 99,
		WorldSize: 2, Precision: "fp32", RNG: map[string]uint64{"seed": 7, "optimizer_steps": uint64(step)},
		Scaler: ScalerState{Scale: 1}}
	add := func(name string, shape ...int) {
		n := 1
		for _, x := range shape {
			n *= x
		}
		mk := func(name string, bias float32) Tensor {
			data := make([]float32, n)
			for i := range data {
				data[i] = bias + float32(i%977)*0.5 + float32(len(name))
			}
			return Tensor{Name: name, Shape: shape, Data: data}
		}
		s.Params = append(s.Params, mk(name, float32(step)))
		s.Optim = append(s.Optim, mk(name+".m", -1), mk(name+".v", 2))
	}
	add("wte.weight", 16, d)
	add("wpe.weight", 8, d)
	for l := range layers {
		add(fmt.Sprintf("h.%d.ln_1.weight", l), d)
		add(fmt.Sprintf("h.%d.attn.c_attn.weight", l), d, d)
		add(fmt.Sprintf("h.%d.mlp.c_fc.weight", l), d, d)
	}
	add("ln_f.weight", d)
	return s
}

// stageNames cuts gptState's parameters into stages of whole layers: the
// embeddings go with the first stage, the final norm with the last.
func stageNames(layers, stages int) [][]string {
	out := make([][]string, stages)
	out[0] = []string{"wte.weight", "wpe.weight"}
	for l := range layers {
		k := l * stages / layers
		out[k] = append(out[k], fmt.Sprintf("h.%d.ln_1.weight", l), fmt.Sprintf("h.%d.attn.c_attn.weight", l), fmt.Sprintf("h.%d.mlp.c_fc.weight", l))
	}
	out[stages-1] = append(out[stages-1], "ln_f.weight")
	return out
}

// splitByNames returns the shards of s whose parameters (with their
// optimizer state) are groups[i], as the stages of a pipeline hold them;
// shard 0 carries the sidecars.
func splitByNames(s *State, groups [][]string, attempt string) []*State {
	out := make([]*State, len(groups))
	for i, g := range groups {
		keep := KeepParams(g...)
		sh := shardOf(s, ShardID{Index: i, Count: len(groups), Attempt: attempt})
		for _, t := range s.Params {
			if keep(t.Name) {
				sh.Params = append(sh.Params, t)
			}
		}
		for _, t := range s.Optim {
			if keep(t.Name) {
				sh.Optim = append(sh.Optim, t)
			}
		}
		out[i] = sh
	}
	return out
}

// splitEven cuts s's Params and Optim each into n contiguous runs.
func splitEven(s *State, n int, attempt string) []*State {
	out := make([]*State, n)
	for i := range n {
		sh := shardOf(s, ShardID{Index: i, Count: n, Attempt: attempt})
		sh.Params = s.Params[i*len(s.Params)/n : (i+1)*len(s.Params)/n]
		sh.Optim = s.Optim[i*len(s.Optim)/n : (i+1)*len(s.Optim)/n]
		out[i] = sh
	}
	return out
}

// shardOf copies s's scalar fields into the State of shard id.
func shardOf(s *State, id ShardID) *State {
	sh := *s
	sh.Params, sh.Optim, sh.Shard = nil, nil, id
	if id.Index > 0 {
		sh.Sidecars = nil
	}
	return &sh
}

// shardRecorder collects the callbacks of several Writers.
type shardRecorder struct {
	mu        sync.Mutex
	published []Info
	written   []ShardInfo
	failed    []error
}

func (r *shardRecorder) config(keep int) WriterConfig {
	cfg := DefaultConfig()
	cfg.Keep = keep
	cfg.OnPublished = func(i Info) { r.mu.Lock(); r.published = append(r.published, i); r.mu.Unlock() }
	cfg.OnShardWritten = func(i ShardInfo) { r.mu.Lock(); r.written = append(r.written, i); r.mu.Unlock() }
	cfg.OnFailed = func(_ int, err error) { r.mu.Lock(); r.failed = append(r.failed, err); r.mu.Unlock() }
	return cfg
}

// counts returns the callbacks recorded for step.
func (r *shardRecorder) counts(step int) (published, written, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, i := range r.published {
		if i.Step == step {
			published++
		}
	}
	for _, i := range r.written {
		if i.Step == step {
			written++
		}
	}
	return published, written, len(r.failed)
}

// shardWriters starts n Writers, each over its own LocalStorage on root
// (as n processes sharing a file system would), closed at the end of the
// test; wrap, if set, wraps each storage.
func shardWriters(t *testing.T, root string, n int, cfg WriterConfig, wrap func(Storage) Storage) []*Writer {
	t.Helper()
	ws := make([]*Writer, n)
	for i := range ws {
		st, err := NewLocalStorage(root)
		if err != nil {
			t.Fatal(err)
		}
		var s Storage = st
		if wrap != nil {
			s = wrap(st)
		}
		if ws[i], err = NewWriter(s, cfg); err != nil {
			t.Fatal(err)
		}
		w := ws[i]
		t.Cleanup(func() { w.Close() })
	}
	return ws
}

// saveShardsConcurrently has ws[i] save shards[i], all writes held until
// every Save has returned so that they run at once, and returns each
// Writer's Flush error.
func saveShardsConcurrently(t *testing.T, ws []*Writer, shards []*State) []error {
	t.Helper()
	ctx := testCtx(t)
	start := make(chan struct{})
	for _, w := range ws {
		w.beforeWrite = func() { <-start }
	}
	for i, w := range ws {
		if err := w.Save(ctx, shards[i]); err != nil {
			t.Fatalf("Save of shard %d: %v", i, err)
		}
	}
	close(start)
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() { errs[i] = w.Flush(ctx) })
	}
	wg.Wait()
	for _, w := range ws {
		w.beforeWrite = nil // the next Save happens-after this Flush
	}
	return errs
}

// saveShardsInOrder saves and flushes each shard in turn on its Writer.
func saveShardsInOrder(t *testing.T, ws []*Writer, shards []*State) []error {
	t.Helper()
	errs := make([]error, len(ws))
	for i, w := range ws {
		if err := w.Save(testCtx(t), shards[i]); err != nil {
			t.Fatalf("Save of shard %d: %v", i, err)
		}
		errs[i] = w.Flush(testCtx(t))
	}
	return errs
}

func requireNoErrors(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
	}
}

// barrierStorage holds every List of a sharded staging directory until n
// have arrived, so that every shard of a checkpoint sees all the others
// present and all of them race for the claim.
type barrierStorage struct {
	Storage
	*barrier
}

// barrier is shared by the barrierStorages of one test's Writers.
type barrier struct {
	n       int
	mu      sync.Mutex
	waiting map[string]int
	release map[string]chan struct{}
}

func newBarrier(n int) *barrier {
	return &barrier{n: n, waiting: map[string]int{}, release: map[string]chan struct{}{}}
}

func (b *barrierStorage) List(ctx context.Context, dir string) ([]string, error) {
	if base := path.Base(dir); strings.HasPrefix(base, tmpPrefix) && strings.Contains(base, "-of-") {
		b.mu.Lock()
		ch, ok := b.release[dir]
		if !ok {
			ch = make(chan struct{})
			b.release[dir] = ch
		}
		b.waiting[dir]++
		if b.waiting[dir] == b.n {
			close(ch)
		}
		b.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("barrier on %s: not every shard listed it", dir)
		}
	}
	return b.Storage.List(ctx, dir)
}

// staleListStorage answers List of one directory with a fixed listing, as
// a shard that listed the staging directory just before another shard
// published it would have seen.
type staleListStorage struct {
	Storage
	dir   string
	names []string
}

func (s *staleListStorage) List(ctx context.Context, dir string) ([]string, error) {
	if dir == s.dir {
		return s.names, nil
	}
	return s.Storage.List(ctx, dir)
}

// countingStorage counts the bytes read from files whose names end in
// suffix, forwarding Seek so that readers can skip.
type countingStorage struct {
	Storage
	suffix string
	read   atomic.Int64
}

func (c *countingStorage) Open(ctx context.Context, name string) (io.ReadCloser, int64, error) {
	rc, size, err := c.Storage.Open(ctx, name)
	if err != nil || len(name) < len(c.suffix) || name[len(name)-len(c.suffix):] != c.suffix {
		return rc, size, err
	}
	return &countingReader{rc: rc, n: &c.read}, size, nil
}

type countingReader struct {
	rc io.ReadCloser
	n  *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (r *countingReader) Seek(off int64, whence int) (int64, error) {
	return r.rc.(io.Seeker).Seek(off, whence)
}

func (r *countingReader) Close() error { return r.rc.Close() }
