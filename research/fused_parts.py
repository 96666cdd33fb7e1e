"""Time the parts the fused forward was rebuilt from, each against what it replaced.

    python research/fused_parts.py        # on a GPU; prints a markdown table

Rows: torch.sort by key dtype (the per-level sorts), the LSH hash (Triton pass vs
torch matmul + Gray-code ops), and the exact causal diagonal blocks at 131k (cuDNN with
its log-sum-exp vs the Triton dense kernel).
"""

from __future__ import annotations

import torch
import triton.testing

from hf_hyper.attention.finders.lsh import fused_lsh_rank, gray_code_rank
from hf_hyper.attention.fused.forward import Problem
from hf_hyper.eval.bench_attention import planted_inputs

N, HEADS, BASE = 131072, 32, 4096


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=30)


def _row(part: str, variant: str, ms: float) -> None:
    print(f"| {part} | {variant} | {ms:.3f} |", flush=True)


def _per_head_dim(dim: int) -> None:
    q, k, v = planted_inputs(N, HEADS, HEADS, dim, torch.bfloat16, True, 0)
    planes = torch.randn(dim, 7, device="cuda")
    hashed = f"hash q, d={dim}"
    _row(hashed, "torch matmul + bit ops",
         _ms(lambda: gray_code_rank((q @ planes.to(q.dtype)) > 0)))  # fmt: skip
    _row(hashed, "Triton pass", _ms(lambda: fused_lsh_rank(q, planes)))
    blocks = N // BASE
    problem = Problem(q, k, v, dim**-0.5)
    diagonal = f"diagonal {blocks} x {BASE}, d={dim}"
    _row(diagonal, "Triton dense", _ms(lambda: problem.dense_diagonal(blocks)))
    _row(diagonal, "cuDNN + LSE", _ms(lambda: problem.cudnn_diagonal(blocks)))


def main() -> None:
    print("| part | variant | ms |\n|---|---|---|")
    ranks = torch.randint(0, 128, (32, 65536), device="cuda")
    for dtype in (torch.int64, torch.int32, torch.int16):
        keys = ranks.to(dtype)
        _row("sort [32, 65536] stable", str(dtype), _ms(lambda k=keys: torch.sort(k, stable=True)))
    for dim in (64, 128):
        _per_head_dim(dim)


if __name__ == "__main__":
    main()
