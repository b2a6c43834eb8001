// Package data loads datasets and provides the deterministic, resumable
// sampler whose order depends only on (seed, epoch):
//
//   - examples: MNIST from the GoMNIST module, any IDX-format dataset by
//     path (Open, LoadIDXDir);
//   - byte-level text: a file or a directory of text files, one token per
//     byte (LoadText);
//   - token shards: what `loom data prepare` writes with Prepare, or llm.c
//     and nanoGPT .bin files of GPT-2 tokens (LoadTokens, StatTokens);
//   - tokenizers: byte, and GPT-2's BPE through github.com/tiktoken-go/tokenizer
//     (NewTokenizer).
//
// # Token shards
//
// A prepared directory holds dataset.json (TokenManifest: the tokenizer and
// vocab, each split's shards in order with their token and document counts
// and checksums, the totals, the inputs) and the shards, train-00000.tok,
// train-00001.tok, ..., val-00000.tok. A shard is a 64-byte header, all
// integers little-endian:
//
//	offset size field
//	0      8    magic "LOOMTOK\x00"
//	8      4    version, uint32 = 1
//	12     4    token width in bytes, uint32: 2 (vocab <= 65536; 4 is reserved
//	            for larger vocabs, which this build refuses)
//	16     4    vocab, uint32
//	20     16   tokenizer name, NUL-padded ("gpt2", "byte")
//	36     8    token count, uint64
//	44     8    document count, uint64: documents that end in this shard
//	52     4    CRC-32C (Castagnoli) of the payload
//	56     4    CRC-32C of header bytes [0, 56)
//	60     4    reserved, zero
//	64     ...  token ids, width bytes each
//
// Each document is followed by the tokenizer's end-of-text id (gpt2: 50256)
// or, for byte, by '\n' unless it ends in one; a split's shards concatenate
// into one token stream (documents may straddle shards). Reading checks
// every shard and names the file and byte offset of what is wrong (a
// *ShardError): a bad magic, an unknown version, a damaged header, a
// tokenizer or vocab other than the manifest's, a file shorter or longer
// than its token count, a payload checksum mismatch, an id >= vocab.
// docs/tokens.md says the same for users.
package data
