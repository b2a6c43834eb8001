#!/usr/bin/env python3
"""GPT-2 as Hugging Face transformers builds it, in plain PyTorch, to check
that a loom GPT checkpoint directory is a Hugging Face GPT-2 directory.

transformers cannot be installed on loom's machines, so this rebuilds
GPT2LMHeadModel with transformers' module names and semantics: Conv1D
layers (weight stored [in, out], y = x @ W + b), c_attn producing q, k, v
in that order, attention scaled by 1/sqrt(head size) with a causal mask,
gelu_new, layernorm eps from config.json (1e-5), lm_head tied to wte unless
tie_word_embeddings is false. The directory's model.safetensors is read by
tensor name (the safetensors format parsed here: an 8-byte header length, a
JSON header, raw little-endian data) and loaded with load_state_dict(strict=
True), so a wrong name, a missing tensor or a wrong shape fails.

Usage:
  hf_gpt2.py DIR --tokens 1,2,3 [--logits FILE]
prints the logits' shape and, with --logits (little-endian float32, the
same (tokens, vocab) logits computed by loom), the largest relative
difference |a-b| / max(|b|, 1e-3 * max|b|), exiting 1 if it exceeds --rtol.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        x = torch.frombuffer(bytearray(data[b:e]), dtype=DTYPES[t["dtype"]])
        out[name] = x.reshape(t["shape"]).float()
    return out


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a linear layer with weight [nx, nf]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        shape = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(shape)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.embd = cfg["n_head"], cfg["n_embd"]
        self.c_attn = Conv1D(3 * self.embd, self.embd)
        self.c_proj = Conv1D(self.embd, self.embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.embd, dim=2)
        heads = lambda z: z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q, k, v = heads(q), heads(k), heads(v)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(c // self.n_head)
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, c))


class GPT2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        inner = cfg.get("n_inner") or 4 * cfg["n_embd"]
        self.c_fc = Conv1D(inner, cfg["n_embd"])
        self.c_proj = Conv1D(cfg["n_embd"], inner)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(cfg["n_embd"], eps=eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg["n_embd"], eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
        self.wpe = nn.Embedding(cfg["n_positions"], cfg["n_embd"])
        self.h = nn.ModuleList([GPT2Block(cfg) for _ in range(cfg["n_layer"])])
        self.ln_f = nn.LayerNorm(cfg["n_embd"], eps=cfg["layer_norm_epsilon"])

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.transformer = GPT2Model(cfg)
        self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab_size"], bias=False)
        self.tied = cfg.get("tie_word_embeddings", True)
        if self.tied:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        return self.lm_head(self.transformer(ids))


def load(directory):
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt2", cfg["model_type"]
    assert cfg["activation_function"] in ("gelu_new", "gelu_pytorch_tanh"), cfg["activation_function"]
    model = GPT2LMHeadModel(cfg)
    state = read_safetensors(os.path.join(directory, "model.safetensors"))
    if model.tied and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--logits", help="loom's logits for the tokens, little-endian float32")
    ap.add_argument("--rtol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg = load(a.dir)
    ids = torch.tensor([[int(x) for x in a.tokens.split(",")]])
    with torch.no_grad():
        logits = model(ids)[0].double()
    print(f"logits {tuple(logits.shape)} from {a.dir} ({cfg['n_layer']} layers, n_embd {cfg['n_embd']}, vocab {cfg['vocab_size']})")
    if a.logits:
        with open(a.logits, "rb") as f:
            raw = f.read()
        loom = torch.frombuffer(bytearray(raw), dtype=torch.float32).double().reshape(logits.shape)
        floor = 1e-3 * logits.abs().max()
        rel = ((loom - logits).abs() / torch.maximum(logits.abs(), floor)).max().item()
        print(f"max relative difference loom vs PyTorch GPT2LMHeadModel: {rel:.3g} (rtol {a.rtol:g})")
        if rel > a.rtol:
            sys.exit(1)


if __name__ == "__main__":
    main()
