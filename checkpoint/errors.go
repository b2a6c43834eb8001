package checkpoint

import "errors"

// Sentinel errors. Every error this package returns wraps one of these (or a
// context error, or the Storage's own error), with the checkpoint path in the
// message, so callers test with errors.Is and never match text.
var (
	// ErrConfig: a WriterConfig failed Validate.
	ErrConfig = errors.New("checkpoint: invalid config")

	// ErrInvalidState: Save or Begin was given a State that cannot be written
	// (empty or unsafe job name, negative step, tensor data that does not
	// fill its shape, duplicate tensor names, non-finite loss scale, an
	// invalid ShardID). The shards of a sharded checkpoint that disagree on
	// the common fields or hold one tensor twice fail the completing
	// shard's write with it (wrapped in ErrWrite).
	ErrInvalidState = errors.New("checkpoint: invalid state")

	// ErrInvalidPath: a Storage name is not a clean relative slash-separated
	// path (absolute, "..", empty segment).
	ErrInvalidPath = errors.New("checkpoint: invalid storage path")

	// ErrClosed: the Writer was closed.
	ErrClosed = errors.New("checkpoint: writer closed")

	// ErrWrite: a background write failed. The checkpoint was not published
	// and its temporary directory was removed (best effort). Returned by
	// Flush and Close.
	ErrWrite = errors.New("checkpoint: write failed")

	// ErrIncomplete: a checkpoint directory has no manifest.json: a torn
	// write (a crash before the manifest, or a partial copy) or a deleted
	// manifest. The directory is never used.
	ErrIncomplete = errors.New("checkpoint: incomplete (no manifest)")

	// ErrCorrupt: a checkpoint's manifest or tensor files do not agree
	// with each other: malformed JSON or safetensors header, a file of the
	// wrong size (truncated or extended), or a tensor whose sha256 differs
	// from the manifest's (flipped bits).
	ErrCorrupt = errors.New("checkpoint: corrupt")

	// ErrVersion: the manifest's format_version is not one this build
	// reads.
	ErrVersion = errors.New("checkpoint: unsupported format version")

	// ErrNoCheckpoint: Latest found no valid checkpoint among those it was
	// allowed to use. The message names every path tried and why each was
	// rejected.
	ErrNoCheckpoint = errors.New("checkpoint: no valid checkpoint")
)
