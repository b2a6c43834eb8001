#!/usr/bin/python3
"""PyTorch peer of `loom bench train examples/gpt-bench.yaml`.

The same model and step as examples/gpt-bench.yaml: a pre-LN GPT with 4
blocks, d_model 256, 4 heads, context 128, GELU MLP 4x, untied byte-level
embeddings (vocab 256), batch 16 sequences; one step is zero_grad, forward,
cross-entropy, backward and torch.optim.AdamW(lr=1e-3) (torch's defaults
otherwise, as the config states them). Tokens are the bytes of
/usr/share/common-licenses, as loom's `dataset: text` reads them.

One (precision, threads) per process, so that the peak RSS it reports is
that configuration's alone. bf16 is torch.autocast('cpu', bfloat16).

Usage: scripts/gpt_step.py --precision fp32|bf16 --threads N [--steps 20]
       [--warmup 3] [--trials 3]
Prints one JSON line: impl, mode, threads, step_ms (median over trials),
tokens_per_s, peak_rss_mib, loss_first, loss_last, torch.
"""
import argparse, glob, json, math, os, resource, statistics, sys, time

# Thread counts must be fixed before torch loads: Debian's torch runs fp32
# matmuls in OpenBLAS, whose own thread pool ignores torch.set_num_threads
# and, beside torch's OpenMP threads, oversubscribes the cores (~30x slower).
_threads = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _threads

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VOCAB, D, HEADS, LAYERS, CTX, BATCH = 256, 256, 4, 4, 128, 16


class Block(nn.Module):
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


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, D), nn.Embedding(CTX, D)
        self.h = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


def corpus():
    data = bytearray()
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                data += fh.read()
    return torch.tensor(list(data), dtype=torch.long)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per trial")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--trials", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = corpus()
    gen = torch.Generator().manual_seed(0)

    def batch():
        ix = torch.randint(0, len(data) - CTX - 1, (BATCH,), generator=gen)
        x = torch.stack([data[i:i + CTX] for i in ix])
        y = torch.stack([data[i + 1:i + CTX + 1] for i in ix])
        return x, y

    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step():
        x, y = batch()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, VOCAB), y.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    first = step()
    for _ in range(a.warmup):
        step()
    per_step, last = [], first
    for _ in range(a.trials):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            last = step()
        per_step.append((time.perf_counter() - t0) / a.steps)
    s = statistics.median(per_step)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "mode": a.precision, "threads": a.threads,
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms": s * 1e3, "tokens_per_s": BATCH * CTX / s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_first": first, "loss_last": last,
    }), flush=True)


if __name__ == "__main__":
    main()
