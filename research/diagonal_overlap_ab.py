"""Same-process A/B of the causal forward's two-stream overlap (fused/overlap.py): the
default call against one with everything on the caller's stream, alternated, with a
call on other inputs and another seed before each timing (so a read of stale memory
would show as a mismatch), and the outputs compared bit for bit.

    python research/diagonal_overlap_ab.py --lengths 16384 32768 131072

With --stages S the block-sample kernel's pipeline depth is also varied (the default
tiles with num_stages S and with the default's): four variants, not two.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.fused import forward, tuning
from hf_hyper.attention.fused.graphs import clear_cuda_graphs
from hf_hyper.attention.fused.overlap import DiagonalOverlap
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import time_cuda


def one_stream(device: torch.device, enabled: bool = True) -> DiagonalOverlap:
    return DiagonalOverlap(device, enabled=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--stages", type=int, default=None, help="also vary num_stages")
    args = p.parse_args()
    config = HyperAttentionConfig(seed=0)
    scramble = HyperAttentionConfig(seed=5, cuda_graph_max_len=0)
    print("| n | d | tiles | overlap | ms (median of rounds) | min ms | same bits |")
    print("|---|---|---|---|---|---|---|")
    for n, dim in itertools.product(args.lengths, args.head_dims):
        inputs = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
        others = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 1)
        key = "block_sample_d64" if dim <= 64 else "block_sample_d128"
        default = tuning.TUNING[key]
        tiles = [default]
        if args.stages is not None and args.stages != default[3]:
            tiles.append((*default[:3], args.stages, *default[4:]))
        variants = list(itertools.product(tiles, (False, True)))
        times = {v: [] for v in variants}
        mins = dict.fromkeys(variants, float("inf"))
        same = dict.fromkeys(variants, True)
        want = None
        repeats = 15 if n <= 32768 else 5
        for _ in range(args.rounds):
            for variant in variants:
                tuning.TUNING[key], overlapped = variant
                forward.DiagonalOverlap = DiagonalOverlap if overlapped else one_stream
                clear_cuda_graphs()  # a graph captured under other settings would replay
                with torch.no_grad():
                    hf_hyper.hyper_attention(*others, causal=True, config=scramble)
                    t = time_cuda(
                        lambda x=inputs: hf_hyper.hyper_attention(*x, causal=True, config=config),
                        warmup=2, repeats=repeats,
                    )  # fmt: skip
                    out = hf_hyper.hyper_attention(*inputs, causal=True, config=config)
                want = out if want is None else want
                same[variant] &= torch.equal(out, want)
                times[variant].append(t.ms)
                mins[variant] = min(mins[variant], t.ms_min)
        tuning.TUNING[key] = default
        forward.DiagonalOverlap = DiagonalOverlap
        for variant in variants:
            ms = statistics.median(times[variant])
            print(f"| {n} | {dim} | {variant[0]} | {variant[1]} | {ms:.3f} | "
                  f"{mins[variant]:.3f} | {same[variant]} |", flush=True)  # fmt: skip
        del inputs, others


if __name__ == "__main__":
    main()
