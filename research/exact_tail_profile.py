"""Where the exact tail's time goes (one causal layer, bf16, 32 heads): the split-key
flash path at several chunk counts against its parts, with the kernels of one call from
torch.profiler. A study for choosing the tail's CUDA path; prints markdown tables.

    python research/exact_tail_profile.py --lengths 32768 131072 --tail 64
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.profiler import ProfilerActivity, profile

from hf_hyper.attention import exact_tail
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import time_cuda


def study(n: int, dim: int, w: int) -> None:
    """Time the variants at one shape, then profile one auto call."""
    q, k, v = planted_inputs(n, 32, 32, dim, torch.bfloat16, True, 0)
    rows = q[:, :, -w:]
    scale = dim**-0.5
    auto = exact_tail._flash_chunks(rows, k, v, n - w)
    variants = {
        f"split, auto ({auto} chunks)": lambda: exact_tail.exact_tail_attention(rows, k, v, scale),
        "torch ops": lambda: exact_tail._torch_ops_attention(rows, k, v, scale),
        "rest alone (torch ops, last 2w keys)": lambda: exact_tail._torch_ops_attention(
            rows, k[:, :, -2 * w :], v[:, :, -2 * w :], scale
        ),
    }
    for chunks in (1, 4, 16, 64, 256):
        variants[f"split, {chunks} chunks"] = lambda c=chunks: exact_tail._split_keys_attention(
            rows, k, v, scale, c
        )
    for chunks in (16, 64):
        run = (n - w) // chunks
        kc = k[0, :, : chunks * run].unflatten(1, (chunks, run)).transpose(0, 1)
        vc = v[0, :, : chunks * run].unflatten(1, (chunks, run)).transpose(0, 1)
        qc = rows[0].expand(chunks, -1, -1, -1).contiguous()
        kcc, vcc = kc.contiguous(), vc.contiguous()
        variants[f"flash op alone, {chunks} chunk views"] = (
            lambda a=qc, b=kc, c=vc: torch.ops.aten._scaled_dot_product_flash_attention(
                a, b, c, 0.0, False, False, scale=scale))  # fmt: skip
        variants[f"flash op alone, {chunks} chunks contiguous"] = (
            lambda a=qc, b=kcc, c=vcc: torch.ops.aten._scaled_dot_product_flash_attention(
                a, b, c, 0.0, False, False, scale=scale))  # fmt: skip
    with torch.no_grad():
        for name, fn in variants.items():
            print(f"| {n} | {dim} | {name} | {time_cuda(fn, repeats=20).ms:.3f} |", flush=True)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            exact_tail.exact_tail_attention(rows, k, v, scale)
            torch.cuda.synchronize()
    print(f"\nkernels of one auto call, n={n}, d={dim}:\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--tail", type=int, default=64)
    args = p.parse_args()
    w = args.tail
    print("| n | d | variant | ms |")
    print("|---|---|---|---|")
    for n, dim in itertools.product(args.lengths, args.head_dims):
        study(n, dim, w)


if __name__ == "__main__":
    main()
