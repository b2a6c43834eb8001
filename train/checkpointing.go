package train

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/jobspec"
)

// Checkpointer saves a trainer's state in the background every
// checkpoint.every_steps steps, at the end and on clean shutdown. The copy
// of the state overlaps the next step's forward and backward pass (Begin)
// and is only waited for before that step's optimizer update.
type Checkpointer struct {
	job   *jobspec.Job
	w     *checkpoint.Writer
	store checkpoint.Storage
	log   *zap.Logger
	state checkpoint.State // reused: tensor views into owner
	owner *Trainer         // whose tensors state views
	last  int              // step of the newest saved checkpoint
	shard checkpoint.ShardID

	// Run identifies the run for the checkpoints a pipeline's stages
	// write in shards (the job's submission time, unix milliseconds): the
	// shards of one checkpoint are those of one run and plan generation.
	Run int64

	// Observer, if set (before the first checkpoint starts), is told of
	// every write's outcome, from the writer goroutine.
	Observer CheckpointObserver
	mu       sync.Mutex
	started  map[int]time.Time // by step: writes begun, not yet reported
}

// CheckpointObserver is told of each checkpoint write's outcome (the
// metrics of a training process implement it).
type CheckpointObserver interface {
	// CheckpointWritten: a checkpoint of bytes (manifest included) was
	// published took after it was started.
	CheckpointWritten(took time.Duration, bytes int64)
	CheckpointFailed()
}

// NewCheckpointer opens job's checkpoint directory. onPublished and
// onFailed, if set, are called (from the writer goroutine) after each
// checkpoint is published, or its write failed: the distributed worker
// records either with the coordinator there.
func NewCheckpointer(job *jobspec.Job, log *zap.Logger, onPublished func(checkpoint.Info), onFailed func(step int, err error)) (*Checkpointer, error) {
	store, err := checkpoint.NewLocalStorage(job.Checkpoint.Dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint.dir %s: %w", job.Checkpoint.Dir, err)
	}
	c := &Checkpointer{job: job, store: store, log: log, last: -1, started: map[int]time.Time{}}
	cfg := checkpoint.DefaultConfig()
	cfg.Keep, cfg.Logger = job.Checkpoint.Keep, log
	cfg.OnPublished = func(i checkpoint.Info) {
		if took, ok := c.finished(i.Step); ok && c.Observer != nil {
			c.Observer.CheckpointWritten(took, i.Bytes)
		}
		if onPublished != nil {
			onPublished(i)
		}
	}
	cfg.OnShardWritten = func(i checkpoint.ShardInfo) {
		// Another stage's writer publishes the checkpoint (and records it).
		if took, ok := c.finished(i.Step); ok && c.Observer != nil {
			c.Observer.CheckpointWritten(took, i.Bytes)
		}
	}
	cfg.OnFailed = func(step int, err error) {
		c.finished(step)
		if c.Observer != nil {
			c.Observer.CheckpointFailed()
		}
		if onFailed != nil {
			onFailed(step, err)
		}
	}
	if c.w, err = checkpoint.NewWriter(store, cfg); err != nil {
		return nil, err
	}
	return c, nil
}

// finished returns how long ago the write of step's checkpoint began and
// forgets it.
func (c *Checkpointer) finished(step int) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.started[step]
	delete(c.started, step)
	return time.Since(at), ok
}

// Due reports whether the trainer's current step should be checkpointed.
func (c *Checkpointer) Due(t *Trainer) bool {
	every := c.job.Checkpoint.EverySteps
	s := t.Steps()
	return s != c.last && s > 0 && (t.Done() || (every > 0 && s%every == 0))
}

// Place sets where the trainer's checkpoints go: a pipeline stage's first
// rank writes its stage's layers as one shard of the checkpoint (the
// generation's stages are its shards), anything else the whole state
// (p nil).
func (c *Checkpointer) Place(p *Pipeline, generation int64) {
	c.shard = checkpoint.ShardID{}
	if p != nil && len(p.Stages) > 1 {
		c.shard = checkpoint.ShardID{Index: p.Stage, Count: len(p.Stages), Attempt: fmt.Sprintf("%d%06d", c.Run, generation)}
	}
}

// Begin starts saving t's current state; the trainer waits for the copy
// before its next optimizer update.
func (c *Checkpointer) Begin(ctx context.Context, t *Trainer, world int) error {
	if c.owner != t || c.state.Shard != c.shard {
		c.state, c.owner = checkpoint.State{Shard: c.shard}, t
	}
	t.fillCheckpoint(&c.state, world)
	// Keyed by step: the previous write may still be reporting while
	// this one waits for the writer.
	c.mu.Lock()
	c.started[t.Steps()] = time.Now()
	c.mu.Unlock()
	if err := c.w.Begin(ctx, &c.state); err != nil {
		c.finished(t.Steps())
		return err
	}
	c.last = t.Steps()
	t.beforeUpdate = func() error {
		t.beforeUpdate = nil
		return c.w.WaitCaptured(ctx)
	}
	return nil
}

// Shutdown starts, on a clean stop, a checkpoint of the steps trained since
// the last one, unless the state is the one loaded from disk; the write
// completes in Close.
func (c *Checkpointer) Shutdown(t *Trainer, world int) {
	if t.step <= t.loaded || c.last == t.step {
		return
	}
	if err := c.Begin(context.Background(), t, world); err != nil {
		c.log.Warn("shutdown checkpoint not started", zap.Error(err))
	}
}

// Flush waits for the write in flight and returns the first write error
// since the last Flush.
func (c *Checkpointer) Flush(ctx context.Context) error { return c.w.Flush(ctx) }

// Close waits for the write in flight and returns the first write error.
func (c *Checkpointer) Close() error { return c.w.Close() }

// fillCheckpoint points s at t's live state (no copy).
func (t *Trainer) fillCheckpoint(s *checkpoint.State, world int) {
	st := t.State()
	s.Job, s.ConfigHash, s.Config, s.Step, s.Epoch = t.job.Name, t.job.Hash(), t.config, st.Step, st.Sampler.Epoch
	s.SamplerEpoch, s.SamplerOffset, s.WorldSize, s.Precision = st.Sampler.Epoch, st.Sampler.Offset, world, t.job.Train.Precision
	s.RNG = map[string]uint64{"seed": t.job.Seed, "optimizer_steps": uint64(st.OptSteps)}
	s.Scaler = checkpoint.ScalerState{Scale: st.Scaler.Scale, GoodSteps: st.Scaler.Good, Skipped: st.Scaler.Skipped}
	if len(s.Params) == 0 {
		for _, p := range t.task.params() {
			s.Params = append(s.Params, checkpoint.Tensor{Name: p.Name, Shape: p.Shape, Data: p.Value})
		}
		for _, o := range t.opt.State() {
			s.Optim = append(s.Optim, checkpoint.Tensor{Name: o.Name, Shape: t.shapeOfState(o.Name), Data: o.Data})
		}
		if g, ok := t.task.(*gptTask); ok && s.Shard.Index == 0 {
			// A GPT checkpoint is a Hugging Face GPT-2 directory too (its
			// first shard writes the config).
			s.Sidecars = []checkpoint.Sidecar{{Name: HFConfigFile, Data: g.net.Config().MarshalHFConfig(g.text.Tokenizer)}}
		}
	}
	if t.scaler == nil {
		s.Scaler.Scale = 1
	}
}

// shapeOfState gives an optimizer state tensor the shape of its parameter
// (state names are "<param name>.<kind>").
func (t *Trainer) shapeOfState(name string) []int {
	for _, p := range t.task.params() {
		if strings.HasPrefix(name, p.Name+".") {
			return p.Shape
		}
	}
	return nil
}

// LoadCheckpoint replaces t's state with s: every parameter and optimizer
// tensor must be present with the same shape.
func (t *Trainer) LoadCheckpoint(s *checkpoint.State) error {
	if s.Job != t.job.Name {
		return fmt.Errorf("checkpoint is of job %q, not %q", s.Job, t.job.Name)
	}
	restore := tensorRestorer(s)
	if err := t.LoadWeights(s); err != nil {
		return err
	}
	for _, o := range t.opt.State() {
		if err := restore(o.Name, t.shapeOfState(o.Name), o.Data); err != nil {
			return err
		}
	}
	st := TrainState{Step: s.Step, Sampler: data.Position{Epoch: s.SamplerEpoch, Offset: s.SamplerOffset},
		OptSteps: int(s.RNG["optimizer_steps"])}
	st.Scaler.Scale, st.Scaler.Good, st.Scaler.Skipped = s.Scaler.Scale, s.Scaler.GoodSteps, s.Scaler.Skipped
	if err := t.Restore(st); err != nil {
		return err
	}
	t.loaded = s.Step
	return nil
}

// LoadWeights sets the model's parameters from s and nothing else (no
// optimizer state, step or data position): what evaluating needs.
func (t *Trainer) LoadWeights(s *checkpoint.State) error {
	restore := tensorRestorer(s)
	for _, p := range t.task.params() {
		if err := restore(p.Name, p.Shape, p.Value); err != nil {
			return err
		}
	}
	t.task.weightsChanged()
	return nil
}

// tensorRestorer returns a function that copies s's tensor name into dst,
// checking that it exists and has dst's size.
func tensorRestorer(s *checkpoint.State) func(name string, shape []int, dst []float32) error {
	byName := map[string]checkpoint.Tensor{}
	for _, x := range append(append([]checkpoint.Tensor(nil), s.Params...), s.Optim...) {
		byName[x.Name] = x
	}
	return func(name string, shape []int, dst []float32) error {
		x, ok := byName[name]
		if !ok {
			if _, old := byName["wte.weight"]; old {
				return fmt.Errorf("checkpoint lacks tensor %q: it is a GPT checkpoint of an earlier loom, before GPT parameters took Hugging Face's GPT-2 names and Conv1D layouts, which this build cannot load", name)
			}
			return fmt.Errorf("checkpoint lacks tensor %q", name)
		}
		if len(x.Data) != len(dst) || (shape != nil && !slices.Equal(x.Shape, shape)) {
			return fmt.Errorf("checkpoint tensor %q has shape %v (%d values), the model needs %v (%d)", name, x.Shape, len(x.Data), shape, len(dst))
		}
		copy(dst, x.Data)
		return nil
	}
}

// ResumeFrom loads the checkpoint job.Checkpoint.Resume names into t:
// "latest" is the newest valid checkpoint of the job among those allowed
// accepts (nil: every published one); otherwise a checkpoint directory.
// Corrupt or torn checkpoints are named in warnings and skipped for older
// ones. It returns the loaded checkpoint's description.
func ResumeFrom(ctx context.Context, t *Trainer, allowed func(string) bool, log *zap.Logger) (checkpoint.Info, error) {
	job := t.job
	store, err := checkpoint.NewLocalStorage(job.Checkpoint.Dir)
	if err != nil {
		return checkpoint.Info{}, err
	}
	var st *checkpoint.State
	var info checkpoint.Info
	keep := t.ownTensors()
	if job.Checkpoint.Resume == "latest" {
		st, info, err = checkpoint.LatestTensors(ctx, store, job.Name, allowed, keep, log)
	} else {
		var rel string
		if rel, err = relativeCheckpoint(job.Checkpoint.Dir, job.Checkpoint.Resume); err == nil {
			info.Path = rel
			st, err = checkpoint.LoadTensors(ctx, store, rel, keep)
		}
	}
	if err != nil {
		return info, fmt.Errorf("resume: %w", err)
	}
	info.Step = st.Step
	if st.ConfigHash != job.Hash() {
		log.Warn("resuming a checkpoint saved under a different model, seed, batch or optimizer configuration",
			zap.String("checkpoint", info.Path), zap.String("saved_hash", st.ConfigHash), zap.String("config_hash", job.Hash()))
	}
	if err := t.LoadCheckpoint(st); err != nil {
		return info, fmt.Errorf("resume from %s: %w", info.Path, err)
	}
	return info, nil
}

// ownTensors keeps the tensors of the trainer's parameters: a pipeline
// stage reads only its own layers' tensors, from a checkpoint of any
// layout (sharded by stages or whole).
func (t *Trainer) ownTensors() func(string) bool {
	var names []string
	for _, p := range t.task.params() {
		names = append(names, p.Name)
	}
	return checkpoint.KeepParams(names...)
}

// RestoreCheckpoint loads t's tensors and state from the checkpoint at path
// (within checkpoint.dir, as the coordinator records it): how a pipeline
// whose workers lost every copy of some layers goes back to its last
// checkpoint without restarting.
func (t *Trainer) RestoreCheckpoint(ctx context.Context, path string) error {
	store, err := checkpoint.NewLocalStorage(t.job.Checkpoint.Dir)
	if err != nil {
		return err
	}
	st, err := checkpoint.LoadTensors(ctx, store, path, t.ownTensors())
	if err != nil {
		return err
	}
	return t.LoadCheckpoint(st)
}

// relativeCheckpoint turns a checkpoint directory (absolute, or relative to
// the working directory) into its path within root ("job/step-00000050").
func relativeCheckpoint(root, dir string) (string, error) {
	absRoot, err1 := filepath.Abs(root)
	absDir, err2 := filepath.Abs(dir)
	if err := errors.Join(err1, err2); err != nil {
		return "", err
	}
	rel, err := filepath.Rel(absRoot, absDir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("%s is not inside checkpoint.dir %s", dir, root)
	}
	return filepath.ToSlash(rel), nil
}
