"""Time the fused causal attention under alternative kernel tile shapes (131k tokens
unless --lengths says otherwise).

    python benchmarks/tune_fused.py              # forward: TUNING variants
    python benchmarks/tune_fused.py --lengths 32768 131072 --wide  # a larger grid
    python benchmarks/tune_fused.py --backward   # forward+backward: BACKWARD_TUNING
    python benchmarks/tune_fused.py --plan-chunks  # forward: PLAN_CHUNK_ROWS, ms and peak

On a GPU; prints ms per variant (one entry changed at a time, the rest at their
defaults). The winners are the defaults in `hf_hyper.attention.fused.tuning.TUNING` and
`hf_hyper.attention.fused.tuning.BACKWARD_TUNING`.
"""

from __future__ import annotations

import argparse
import itertools

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.fused import tuning
from hf_hyper.attention.fused.graphs import clear_cuda_graphs
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import time_cuda

N = 131072
VARIANTS = {
    64: [
        ("block_sample_d64", t)
        for t in [(128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3)]
    ],
    128: [
        ("block_sample_d128", t)
        for t in [(64, 32, 4, 3, 128), (64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3)]
    ],
}
# The wider forward grid: warps, stages and register caps around the defaults.
WIDE_VARIANTS = {
    64: [
        ("block_sample_d64", t)
        for t in [
            (128, 32, 4, 3), (128, 32, 4, 4), (128, 32, 4, 2), (128, 64, 4, 3),
            (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3),
            (64, 64, 4, 3), (256, 32, 8, 3),
            # register caps for four (or two 8-warp) programs per SM
            (128, 32, 4, 3, 128), (128, 32, 4, 2, 128), (128, 32, 8, 3, 128),
            (128, 64, 8, 2, 128), (256, 32, 8, 2, 128),
        ]
    ],
    128: [
        ("block_sample_d128", t)
        for t in [
            (64, 32, 4, 3, 128), (64, 32, 4, 4, 128), (64, 32, 4, 2, 128),
            (64, 64, 4, 3, 128), (64, 64, 4, 2, 128), (64, 32, 8, 3), (64, 64, 8, 3),
            (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3),
            (64, 32, 4, 3, 168),
            # the cap for two 8-warp programs per SM, and none at two stages
            (128, 32, 8, 2, 128), (128, 32, 8, 3, 128), (128, 64, 8, 2, 128),
            (64, 32, 4, 2),
        ]
    ],
}  # fmt: skip
BACKWARD_VARIANTS = {
    64: [
        *(("dq", t) for t in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3)]),
        *(("dkdv", t) for t in [(32, 128, 4, 3), (64, 128, 4, 3), (64, 64, 4, 3)]),
    ],
    128: [
        *(("dq_d128", t) for t in [(128, 32, 8, 3), (128, 32, 4, 3), (128, 64, 8, 3)]),
        *(("dkdv_d128", t) for t in [(32, 128, 4, 3), (64, 128, 8, 3), (32, 128, 8, 3)]),
        *(("dkdv_d128", t) for t in [(32, 64, 4, 3), (64, 64, 4, 3)]),
    ],
}


PLAN_CHUNK_ROWS = [2**20, 2**21, 2**22, 2**23]


def plan_chunks() -> None:
    """Forward time and peak memory (above the inputs) per PLAN_CHUNK_ROWS, both masks."""
    default = tuning.PLAN_CHUNK_ROWS
    config = HyperAttentionConfig(seed=0)
    for dim in (64, 128):
        for causal in (False, True):
            q, k, v = planted_inputs(N, 32, 32, dim, torch.bfloat16, causal, 0)
            for rows in PLAN_CHUNK_ROWS:
                tuning.PLAN_CHUNK_ROWS = rows
                with torch.no_grad():
                    t = time_cuda(
                        lambda q=q, k=k, v=v, causal=causal: hf_hyper.hyper_attention(
                            q, k, v, causal=causal, config=config
                        ),
                        warmup=1, repeats=5,
                    )  # fmt: skip
                print(f"d={dim} causal={causal} PLAN_CHUNK_ROWS=2**{rows.bit_length() - 1}: "
                      f"{t.ms:.2f} ms, peak {t.peak_gib:.3f} GiB", flush=True)  # fmt: skip
            del q, k, v
    tuning.PLAN_CHUNK_ROWS = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backward", action="store_true", help="time forward+backward")
    parser.add_argument("--plan-chunks", action="store_true", help="time PLAN_CHUNK_ROWS")
    parser.add_argument("--lengths", type=int, nargs="+", default=[N], help="tokens")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--wide", action="store_true", help="the wider forward grid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", type=int, default=0, help="the grid's last ONLY entries")
    args = parser.parse_args()
    if args.plan_chunks:
        plan_chunks()
        return
    table = tuning.BACKWARD_TUNING if args.backward else tuning.TUNING
    variants = BACKWARD_VARIANTS if args.backward else WIDE_VARIANTS if args.wide else VARIANTS
    default = dict(table)
    config = HyperAttentionConfig(seed=0)
    for n, dim in itertools.product(args.lengths, args.head_dims):
        q, k, v = planted_inputs(n, 32, 32, dim, torch.bfloat16, True, 0)
        grad = torch.randn_like(q)
        for t in (q, k, v):
            t.requires_grad_(args.backward)

        def run(q=q, k=k, v=v, grad=grad) -> None:
            for t in (q, k, v):
                t.grad = None
            with torch.set_grad_enabled(args.backward):
                out = hf_hyper.hyper_attention(q, k, v, causal=True, config=config)
            if args.backward:
                out.backward(grad)

        for key, tiles in (
            # the current default first, then the grid's last entries
            [(variants[dim][0][0], default[variants[dim][0][0]]), *variants[dim][-args.only :]]
            if args.only
            else variants[dim]
        ):
            table.update(default)
            table[key] = tiles
            clear_cuda_graphs()  # a graph captured under other tiles would replay them
            t = time_cuda(run, warmup=2, repeats=args.repeats)
            print(f"n={n} d={dim} {key}={tiles}: {t.ms:.3f} ms (min {t.ms_min:.3f})", flush=True)
        del q, k, v, grad
    table.update(default)


if __name__ == "__main__":
    main()
