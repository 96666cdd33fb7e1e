"""Where the exact tail's time goes (one causal layer, bf16, 32 heads): the tail against
its parts and torch ops, with the kernels of one call from torch.profiler, and the rate at
which each reads the keys and values (the floor of a tail that is not fused into the
layer's kernel). A study for choosing the tail's CUDA path; prints markdown tables.

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
    """Time the tail and its parts at one shape, then profile one call."""
    q, k, v = planted_inputs(n, 32, 32, dim, torch.bfloat16, True, 0)
    rows = q[:, :, -w:]
    scale = dim**-0.5
    before = n - w
    flash = torch.ops.aten._scaled_dot_product_flash_attention
    q32, k32, v32 = (t.float() for t in (rows, k, v))
    variants = {
        "the tail (rectangle + triangle + merge)": lambda: exact_tail.exact_tail_attention(
            rows, k, v, scale
        ),
        # float32 inputs take the torch-ops path (no flash kernel for them)
        "torch ops (float32 inputs)": lambda: exact_tail.exact_tail_attention(q32, k32, v32, scale),
        "rectangle alone (one flash call)": lambda: flash(
            rows, k[:, :, :before], v[:, :, :before], 0.0, False, False, scale=scale
        ),
        "triangle alone (one flash call)": lambda: flash(
            rows, k[:, :, before:], v[:, :, before:], 0.0, True, False, scale=scale
        ),
    }
    # the floor of any unfused tail: reading every key and value once
    read_gb = 2 * k.numel() * k.element_size() / 1e9
    with torch.no_grad():
        for name, fn in variants.items():
            ms = time_cuda(fn, repeats=20).ms
            print(f"| {n} | {dim} | {name} | {ms:.3f} | {read_gb / ms:.2f} |", flush=True)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            exact_tail.exact_tail_attention(rows, k, v, scale)
            torch.cuda.synchronize()
    print(f"\nkernels of one call, n={n}, d={dim}:\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--tail", type=int, default=64)
    args = p.parse_args()
    w = args.tail
    print("| n | d | variant | ms | K and V read, TB/s equivalent |")
    print("|---|---|---|---|---|")
    for n, dim in itertools.product(args.lengths, args.head_dims):
        study(n, dim, w)


if __name__ == "__main__":
    main()
