#!/usr/bin/env python3
"""The PyTorch twin of a loom GPT job: the same model, optimizer, schedule,
data and data order, to compare held-out loss after the same token budget.

Model: GPT2LMHeadModel as scripts/hf_gpt2.py builds it (Hugging Face's
modules: Conv1D, gelu_new, pre-LN, tied head), initialised as loom (and
nanoGPT) do: N(0, 0.02) for matrices and embeddings, N(0, 0.02/sqrt(2L)) for
the c_proj weights, zero biases, unit layernorm gains. Optimizer: torch's
AdamW with weight decay on tensors of rank >= 2 only, linear warmup then
cosine decay to lr*min_lr_ratio (optimizer/schedule.go), the gradients
clipped to a global norm (clip_grad_norm_), the loss the mean over every
predicted token of the step. Data: a loom token dataset (loom data prepare;
docs/tokens.md), windows of context+1 tokens starting every context tokens,
each step's windows in the order loom's sample ledger (launch
--sample-ledger) lists them. Held-out loss: the mean over the validation
windows loom's end-of-training evaluation reads (min(512, max(8,
32768/context)) windows spread evenly over the split).

Prints one JSON object: {"val_loss", "steps", "tokens", "wall_s", ...}.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_gpt2 import GPT2LMHeadModel  # noqa: E402

HEADER = 64


def read_split(directory, split):
    with open(os.path.join(directory, "dataset.json")) as f:
        meta = json.load(f)
    parts = []
    for shard in meta[split]["shards"]:
        with open(os.path.join(directory, shard["file"]), "rb") as f:
            raw = f.read()
        assert raw[:8] == b"LOOMTOK\0", shard["file"]
        (width,) = struct.unpack("<I", raw[12:16])
        (count,) = struct.unpack("<Q", raw[36:44])
        assert width == 2, width
        parts.append(np.frombuffer(raw, dtype="<u2", count=count, offset=HEADER))
    return np.concatenate(parts).astype(np.int64), meta


def windows(tokens, ctx, idx):
    x = np.stack([tokens[i * ctx:i * ctx + ctx + 1] for i in idx])
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(x[:, 1:])


def init_like_loom(model, layers, gen):
    proj = 0.02 / math.sqrt(2 * layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight":
                continue  # tied to wte
            if p.dim() >= 2:
                p.normal_(0.0, proj if name.endswith("c_proj.weight") else 0.02, generator=gen)
            elif "ln_" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def lr_at(step, a):
    """optimizer/schedule.go: step is 0-based."""
    if a.warmup > 0 and step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if a.steps <= a.warmup:
        return a.lr
    progress = min(1.0, (step - a.warmup) / (a.steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="loom token dataset directory")
    ap.add_argument("--ledger", required=True, help="loom's sample ledger (JSON lines: step, samples)")
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--d-model", type=int, required=True)
    ap.add_argument("--context", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--clip", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--min-lr-ratio", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    train, meta = read_split(a.data, "train")
    val, _ = read_split(a.data, "val")
    ctx = a.context
    order = {}
    with open(a.ledger) as f:
        for line in f:
            e = json.loads(line)
            if not e.get("tentative"):
                order[e["step"]] = e["samples"]
    missing = [s for s in range(1, a.steps + 1) if s not in order]
    if missing:
        sys.exit(f"lm_twin: the ledger lacks steps {missing[:5]}...")

    cfg = {"n_embd": a.d_model, "n_head": a.heads, "n_layer": a.layers, "n_positions": ctx,
           "vocab_size": a.vocab, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    model = GPT2LMHeadModel(cfg)
    init_like_loom(model, a.layers, torch.Generator().manual_seed(a.seed))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "lm_head.weight"]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    lossf = torch.nn.CrossEntropyLoss()
    start = time.time()
    tokens = 0
    for step in range(1, a.steps + 1):
        x, y = windows(train, ctx, order[step])
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1, a)
        logits = model(x)
        loss = lossf(logits.reshape(-1, a.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        tokens += x.numel()
        if step % 50 == 0:
            print(f"step {step}/{a.steps} loss {loss.item():.4f}", file=sys.stderr)
    wall = time.time() - start

    nval = (len(val) - 1) // ctx
    nwin = min(nval, max(8, min(512, 32768 // ctx)))
    idx = [i * nval // nwin for i in range(nwin)]
    model.eval()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, nwin, 8):
            x, y = windows(val, ctx, idx[lo:lo + 8])
            logits = model(x)
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1), reduction="sum").item()
    print(json.dumps({"impl": "pytorch", "seed": a.seed, "steps": a.steps, "tokens": tokens, "val_loss": total / (nwin * ctx),
                      "val_windows": nwin, "wall_s": wall, "tokens_per_s": tokens / wall, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
