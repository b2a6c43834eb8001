#!/usr/bin/python3
"""PyTorch GPipe peer of `loom launch examples/gpt-bench.yaml --pipeline-stages N`.

The model and step of scripts/gpt_step.py (examples/gpt-bench.yaml: a pre-LN
GPT, 4 blocks, d_model 256, 4 heads, context 128, GELU MLP 4x, untied
byte-level embeddings, vocab 256, global batch 16 sequences, AdamW lr 1e-3
with torch's other defaults, fp32, bytes of /usr/share/common-licenses), cut
into pipeline stages with torch.distributed.pipeline.sync.Pipe, the GPipe of
Debian's torch 1.13 (the only pipelining it has; torch.distributed.pipelining
came in 2.4). The first stage holds the embeddings and its blocks, the last its
blocks, the final layernorm and the head, as loom's plan cuts them; --blocks
gives each stage's block count. --chunks is GPipe's micro-batch count (loom's
train.micro_batches). The loss is the cross-entropy of the whole batch, taken
on Pipe's gathered output.

What this peer is, honestly: torch 1.13's Pipe places each stage on a device
and runs each device's work on one worker thread of this one process. On CPU
every stage is on the device "cpu", and Pipe's create_workers keeps one
worker thread per device, so all stages share a single thread: the stages'
forwards run one after another, never side by side, and the backward runs in
autograd's CPU thread (the caller). Whatever parallelism there is comes from
torch's intra-op threads (--threads, one OpenMP/OpenBLAS pool for the whole
process). loom instead runs one process per stage, overlapping the stages'
micro-batches. So on CPU this is GPipe's schedule and bookkeeping without its
concurrency: the closest like-for-like torch 1.13 offers without GPUs.

Pipe's default checkpoint="except_last" recomputes every micro-batch's
forward but the last one's in the backward; loom keeps the activations, so
the default here is --checkpoint never (the like-for-like one).

Pipe needs torch.distributed.rpc initialised; here it is a world of one
process over 127.0.0.1.

Usage: scripts/gpipe_gpt.py [--stages 2] [--blocks 2,2] [--chunks 4]
       [--threads 2] [--steps 20] [--warmup 3] [--checkpoint never]
Prints one JSON line last: impl, torch, stages, blocks, chunks, threads,
checkpoint, steps, step_ms (median), tokens_per_s (timed tokens over the
timed steps' wall time), peak_rss_mib, loss_first, loss_last.
"""
import argparse, glob, json, math, os, resource, socket, statistics, sys, time

# Thread counts must be fixed before torch loads (see scripts/gpt_step.py:
# Debian's torch does fp32 matmuls in OpenBLAS, whose pool ignores
# torch.set_num_threads).
_threads = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _threads

import torch  # noqa: E402
import torch.distributed.rpc as rpc  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.distributed.pipeline.sync import Pipe  # noqa: E402

VOCAB, D, HEADS, LAYERS, CTX, BATCH = 256, 256, 4, 4, 128, 16


class Block(nn.Module):
    """The block of scripts/gpt_step.py."""

    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.c_fc, self.mlp_proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        heads = lambda z: z.view(b, t, HEADS, D // HEADS).transpose(1, 2)
        q, k, v = heads(q), heads(k), heads(v)
        # The explicit T×T form (torch 1.13 has no fused CPU attention).
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // HEADS)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(b, t, D))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, D), nn.Embedding(CTX, D)

    def forward(self, idx):
        return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, x):
        return self.lm_head(self.ln_f(x))


def stages_of(counts):
    """One nn.Sequential per stage: the embedding with the first, the head
    with the last. Built in the order of scripts/gpt_step.py's modules
    (embeddings, blocks, head), so one seed gives the same initial weights."""
    embed, blocks, head = Embed(), [Block() for _ in range(LAYERS)], Head()
    out, at = [], 0
    for s, n in enumerate(counts):
        mods = ([embed] if s == 0 else []) + blocks[at:at + n] + ([head] if s == len(counts) - 1 else [])
        at += n
        out.append(nn.Sequential(*mods))
    return nn.Sequential(*out)


def corpus():
    data = bytearray()
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                data += fh.read()
    return torch.tensor(list(data), dtype=torch.long)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--blocks", default="", help="blocks per stage, comma-separated (default: as even as possible, the extra ones first)")
    ap.add_argument("--chunks", type=int, default=0, help="micro-batches per step (default: twice the stages, as loom's)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads of this one process")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    ap.add_argument("--checkpoint", choices=["never", "except_last", "always"], default="never")
    a = ap.parse_args()
    if a.blocks:
        counts = [int(c) for c in a.blocks.split(",")]
    else:
        counts = [LAYERS // a.stages + (1 if s < LAYERS % a.stages else 0) for s in range(a.stages)]
    if len(counts) != a.stages or sum(counts) != LAYERS or min(counts) < 1:
        ap.error(f"--blocks {a.blocks!r}: need {a.stages} counts of at least 1 summing to {LAYERS}")
    chunks = a.chunks or min(2 * a.stages, BATCH)
    if not 1 <= chunks <= BATCH:
        ap.error(f"--chunks {chunks}: need 1..{BATCH}")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rpc.init_rpc("worker", rank=0, world_size=1,
                 rpc_backend_options=rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{free_port()}"))
    try:
        data = corpus()
        gen = torch.Generator().manual_seed(0)

        def batch():
            ix = torch.randint(0, len(data) - CTX - 1, (BATCH,), generator=gen)
            x = torch.stack([data[i:i + CTX] for i in ix])
            y = torch.stack([data[i + 1:i + CTX + 1] for i in ix])
            return x, y

        model = Pipe(stages_of(counts), chunks=chunks, checkpoint=a.checkpoint)
        if len(model.partitions) != a.stages:
            raise SystemExit(f"Pipe made {len(model.partitions)} partitions of {a.stages} stages")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

        def step():
            x, y = batch()
            opt.zero_grad(set_to_none=True)
            logits = model(x).local_value()
            loss = F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
            loss.backward()
            opt.step()
            return loss.item()

        first = step()
        for _ in range(a.warmup):
            step()
        times, last = [], first
        for _ in range(a.steps):
            t0 = time.perf_counter()
            last = step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({
            "impl": "pytorch-pipe-gpipe", "torch": torch.__version__, "stages": a.stages,
            "blocks": ",".join(map(str, counts)), "chunks": chunks, "threads": a.threads,
            "checkpoint": a.checkpoint, "steps": a.steps,
            "step_ms": statistics.median(times) * 1e3, "tokens_per_s": BATCH * CTX * len(times) / sum(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loss_first": first, "loss_last": last,
        }), flush=True)
    finally:
        rpc.shutdown()


if __name__ == "__main__":
    main()
