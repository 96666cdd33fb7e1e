"""One window of held-out text through a real checkpoint, for the benchmarks that study
its captured attention inputs (`large_entry_oracle.py`, `bucket_finders.py`,
`residual_estimators.py`), and the first causal cut's rectangles they measure on."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def add_window_arguments(p: argparse.ArgumentParser, length: int) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--length", type=int, default=length)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all patchable")


def model_and_window(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model in float32 and the text's first args.length tokens as the tokenizer
    makes them (with whatever prefix it adds, as the jobs' windows have)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, gguf_file=args.gguf_file, dtype=torch.float32
    ).eval()
    with open(args.text, encoding="utf-8") as f:
        text = f.read(args.length * 12)  # a dozen characters per token is plenty
    return model, tokenizer(text, return_tensors="pt").input_ids[:, : args.length]


@dataclass
class Rectangle:
    """One KV head's first-cut rectangle in float64: queries q [g, rows, d] after the
    cut, keys k [n/2, d] and values v [n/2, dv] before it, scaled scores [g, rows, n/2],
    the exact output [g, rows, dv], and v_sq, the squared Frobenius norm of V counted
    once per query row (the denominator of ||O - O*||_F / ||V||_F)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scores: torch.Tensor
    exact: torch.Tensor
    v_sq: float


def cut_rectangles(q, k, v, scale: float, rows: int) -> Iterator[Rectangle]:
    """The first `rows` queries after the first causal cut against the keys before it,
    one KV head at a time, from captured q [1, hq, n, d], k, v [1, hk, n, d]."""
    half = q.shape[2] // 2
    g = q.shape[1] // k.shape[1]
    for kv in range(k.shape[1]):
        qz = q[0, kv * g : (kv + 1) * g, half : half + rows].double()
        kz, vz = k[0, kv, :half].double(), v[0, kv, :half].double()
        scores = qz @ kz.T * scale
        v_sq = vz.pow(2).sum().item() * g * qz.shape[1] / half
        yield Rectangle(qz, kz, vz, scores, torch.softmax(scores, -1) @ vz, v_sq)
