package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"time"

	"go.uber.org/zap"
)

// completion is how a shard's write ended.
type completion int

const (
	pending   completion = iota // some shard is still missing
	completed                   // every shard present; another Writer holds the claim
	won                         // this Writer published the checkpoint
)

// writeShard writes this Writer's shard of a sharded checkpoint into the
// staging directory its attempt shares with the other shards, and publishes
// the checkpoint if this shard completes it.
//
// The protocol, for the Count Writers of one (step, attempt), in any
// processes over one file system:
//
//  1. Each writes its tensor files (shard 0 also the sidecars) into the
//     shared staging directory, then its manifest
//     (manifest-0000i-of-0000N.json), last: a shard is present once its
//     manifest is.
//  2. Each then lists the staging directory. The last shard to finish sees
//     every manifest; shards that finish together may all see them.
//  3. Those that see every shard create the claim file with
//     Storage.CreateExclusive; at most one succeeds. It reads every shard's
//     manifest, checks that they agree and that every listed file has its
//     size, writes model.safetensors.index.json and manifest.json (last),
//     publishes the directory under its final name, and runs retention.
//     The others report OnShardWritten: a create refused because the claim
//     exists, or because the staging directory is gone (already
//     published), is the normal end of a lost race, not an error. Only the
//     claimant ever publishes, so Publish never races with itself.
//
// A shard that never finishes leaves the others in staging, unpublished:
// readers list only published names, and retention removes the directory
// once a newer checkpoint is published.
func (w *Writer) writeShard(ctx context.Context) error {
	s := &w.snap
	id := s.shard
	final := StepDir(s.job, s.step)
	staging := shardStaging(s.job, s.step, id)
	part := shardFile(ManifestFile, id.Index, id.Count)
	// Until its manifest is durable the shard is absent, and a failure
	// removes its own files: never the directory, which the other shards
	// share.
	var own []string
	fail := func(err error) error {
		for _, name := range own {
			if rerr := w.st.RemoveAll(context.WithoutCancel(ctx), staging+"/"+name); rerr != nil {
				w.log.Warn("checkpoint: removing a failed shard's file", zap.String("path", staging+"/"+name), zap.Error(rerr))
			}
		}
		return fmt.Errorf("%w: %s (shard %d of %d): %w", ErrWrite, final, id.Index+1, id.Count, err)
	}
	var sizes [2]int64
	bytes := int64(0)
	for i := range s.files {
		f := &s.files[i]
		meta := s.fileMeta(f)
		own = append(own, f.name)
		err := w.st.WriteFile(ctx, staging+"/"+f.name, func(out io.Writer) error {
			n, err := f.write(out, meta)
			sizes[i] = n
			return err
		})
		if err != nil {
			return fail(err)
		}
		bytes += sizes[i]
	}
	for _, f := range s.sidecars {
		own = append(own, f.Name)
		if err := w.st.WriteFile(ctx, staging+"/"+f.Name, func(out io.Writer) error {
			_, err := out.Write(f.Data)
			return err
		}); err != nil {
			return fail(err)
		}
		bytes += int64(len(f.Data))
	}
	raw, err := json.MarshalIndent(s.manifest(time.Now(), sizes), "", "  ")
	if err != nil {
		return fail(err)
	}
	raw = append(raw, '\n')
	own = append(own, part)
	if err := w.st.WriteFile(ctx, staging+"/"+part, func(out io.Writer) error {
		_, err := out.Write(raw)
		return err
	}); err != nil {
		return fail(err)
	}
	bytes += int64(len(raw))

	// The shard is present. From here its files stay whatever happens:
	// another shard may already be completing the checkpoint with them.
	info, how, err := w.complete(ctx, staging, final)
	if err != nil {
		return fmt.Errorf("%w: %s (completing it as shard %d of %d): %w", ErrWrite, final, id.Index+1, id.Count, err)
	}
	if how == won {
		w.log.Info("checkpoint published", zap.String("path", final), zap.Int("step", info.Step),
			zap.Int("shards", id.Count), zap.Int64("bytes", info.Bytes))
		w.published(ctx, info, id.Attempt)
		return nil
	}
	si := ShardInfo{Path: final, Staging: staging, Job: s.job, Step: s.step, Shard: id, Bytes: bytes, AllPresent: how == completed}
	w.log.Info("checkpoint shard written", zap.String("path", staging+"/"+part), zap.Bool("all_present", si.AllPresent))
	if w.cfg.OnShardWritten != nil {
		w.cfg.OnShardWritten(si)
	}
	return nil
}

// complete publishes the sharded checkpoint in staging if every shard of
// it is present and this Writer wins the claim (see writeShard).
func (w *Writer) complete(ctx context.Context, staging, final string) (Info, completion, error) {
	s := &w.snap
	id := s.shard
	names, err := w.st.List(ctx, staging)
	if err != nil {
		return Info{}, pending, err
	}
	present := make(map[string]bool, len(names))
	for _, n := range names {
		present[n] = true
	}
	for i := range id.Count {
		if !present[shardFile(ManifestFile, i, id.Count)] {
			return Info{}, pending, nil
		}
	}
	err = w.st.CreateExclusive(ctx, staging+"/"+claimFile, []byte(shardFile(ManifestFile, id.Index, id.Count)+"\n"))
	if errors.Is(err, fs.ErrExist) || errors.Is(err, fs.ErrNotExist) {
		return Info{}, completed, nil
	}
	if err != nil {
		return Info{}, pending, err // the claim may exist: the directory is then a leftover
	}

	// This Writer holds the claim: no other writes manifest.json into
	// staging or publishes it. Every shard is written, so a failure from
	// here on removes the whole directory: nobody else will complete it.
	fail := func(err error) (Info, completion, error) {
		if rerr := w.st.RemoveAll(context.WithoutCancel(ctx), staging); rerr != nil {
			w.log.Warn("checkpoint: removing staging directory", zap.String("path", staging), zap.Error(rerr))
		}
		return Info{}, won, err
	}
	top, err := w.merge(ctx, staging)
	if err != nil {
		return fail(err)
	}
	index := hfIndexJSON(top)
	if err := w.st.WriteFile(ctx, staging+"/"+HFIndexFile, func(out io.Writer) error {
		_, err := out.Write(index)
		return err
	}); err != nil {
		return fail(err)
	}
	sum := sha256.Sum256(index)
	top.Indexes = append([]SidecarEntry{{Name: HFIndexFile, Size: int64(len(index)), SHA256: hex.EncodeToString(sum[:])}}, top.Indexes...)
	if err := top.check(final, s.job, s.step); err != nil { // what every reader will check
		return fail(err)
	}
	raw, err := w.writeManifest(ctx, staging, top)
	if err != nil {
		return fail(err)
	}
	if err := w.st.Publish(ctx, staging, final); err != nil {
		return fail(err)
	}
	// A late claimant's create now fails: its staging directory is gone.
	if err := w.st.RemoveAll(ctx, final+"/"+claimFile); err != nil {
		w.log.Warn("checkpoint: removing the completion claim", zap.String("path", final+"/"+claimFile), zap.Error(err))
	}
	sum = sha256.Sum256(raw)
	return infoFromManifest(final, top, int64(len(raw)), hex.EncodeToString(sum[:])), won, nil
}

// merge reads and checks the manifest of every shard in staging and
// returns the checkpoint's manifest: the shards' common fields, their
// files and tensors in shard order, shard 0's sidecars, the latest shard's
// creation time, and in Indexes every shard manifest (the caller adds the
// Hugging Face index). Shards that disagree on a common field, or that
// hold a tensor of the same name, are ErrInvalidState.
func (w *Writer) merge(ctx context.Context, staging string) (*Manifest, error) {
	s := &w.snap
	id := s.shard
	var top *Manifest
	owner := map[[2]string]int{} // (kind, tensor name) -> shard
	for i := range id.Count {
		name := staging + "/" + shardFile(ManifestFile, i, id.Count)
		m, raw, err := readManifestFile(ctx, w.st, name)
		if err != nil {
			return nil, err
		}
		if err := m.checkPart(name, s.job, s.step, i+1); err != nil {
			return nil, err
		}
		if m.Shards != id.Count || m.Attempt != id.Attempt {
			return nil, fmt.Errorf("%w: %s: shard of %d (attempt %q) in the staging directory of %d (attempt %q)", ErrCorrupt, name, m.Shards, m.Attempt, id.Count, id.Attempt)
		}
		if top == nil {
			c := *m
			top = &c
			top.Part, top.Files, top.Tensors = 0, nil, nil
		} else if field := differs(top, m); field != "" {
			return nil, fmt.Errorf("%w: shard %d of %d disagrees with shard 1 on %s (every shard of a checkpoint saves the same step, sampler, RNG, scaler and config)", ErrInvalidState, i+1, id.Count, field)
		}
		if m.Created.After(top.Created) {
			top.Created = m.Created
		}
		for _, f := range m.Files {
			rc, _, err := openListed(ctx, w.st, staging+"/"+f.Name, f.Size)
			if err != nil {
				return nil, err
			}
			rc.Close()
		}
		for _, t := range m.Tensors {
			key := [2]string{OptimizerFile, t.Name}
			if paramsFile(t.File) {
				key[0] = ModelFile
			}
			if j, dup := owner[key]; dup {
				return nil, fmt.Errorf("%w: tensor %q is in shard %d and shard %d of %d", ErrInvalidState, t.Name, j+1, i+1, id.Count)
			}
			owner[key] = i
		}
		top.Files = append(top.Files, m.Files...)
		top.Tensors = append(top.Tensors, m.Tensors...)
		sum := sha256.Sum256(raw)
		top.Indexes = append(top.Indexes, SidecarEntry{Name: shardFile(ManifestFile, i, id.Count), Size: int64(len(raw)), SHA256: hex.EncodeToString(sum[:])})
	}
	return top, nil
}

// differs names the first field other than the shard's own (files,
// tensors, sidecars, creation time) on which two shard manifests differ,
// or returns "".
func differs(a, b *Manifest) string {
	switch {
	case a.FormatVersion != b.FormatVersion:
		return "format_version"
	case a.ConfigHash != b.ConfigHash:
		return "config_hash"
	case a.Config != b.Config:
		return "config"
	case a.Epoch != b.Epoch:
		return "epoch"
	case a.Sampler != b.Sampler:
		return "sampler"
	case !maps.Equal(a.RNG, b.RNG):
		return "rng"
	case a.Scaler != b.Scaler:
		return "scaler"
	case a.Precision != b.Precision:
		return "precision"
	case a.WorldSize != b.WorldSize:
		return "world_size"
	}
	return ""
}
