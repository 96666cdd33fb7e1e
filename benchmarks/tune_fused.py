"""Time the fused causal forward at 131k tokens under alternative kernel tile shapes.

    python benchmarks/tune_fused.py      # on a GPU; prints ms per TUNING variant

The winners are the defaults in `hf_hyper.attention.fused.TUNING`.
"""

from __future__ import annotations

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import fused
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import time_cuda

N = 131072
VARIANTS = [
    *(("block_sample_d64", t) for t in [(128, 64, 4, 3), (64, 64, 4, 2), (128, 32, 4, 3)]),
    *(("block_sample_d128", t) for t in [(128, 32, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3)]),
]


def main() -> None:
    default = dict(fused.TUNING)
    config = HyperAttentionConfig(seed=0)
    for dim in (64, 128):
        q, k, v = planted_inputs(N, 32, 32, dim, torch.bfloat16, True, 0)
        for key, tiles in VARIANTS:
            fused.TUNING.update(default)
            fused.TUNING[key] = tiles
            with torch.no_grad():
                t = time_cuda(
                    lambda q=q, k=k, v=v: hf_hyper.hyper_attention(
                        q, k, v, causal=True, config=config
                    ),
                    warmup=1,
                    repeats=3,
                )
            print(f"d={dim} {key}={tiles}: {t.ms:.2f} ms", flush=True)
        del q, k, v
    fused.TUNING.update(default)


if __name__ == "__main__":
    main()
