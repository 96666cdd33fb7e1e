"""Where the fused HyperAttention forward spends its time (torch profiler, CUDA kernels).

    python benchmarks/profile_fused.py --seq-len 131072 --head-dim 128 --causal
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.eval.bench_attention import planted_inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seq-len", type=int, default=131072)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--causal", action="store_true")
    args = p.parse_args()
    q, k, v = planted_inputs(
        args.seq_len, args.heads, args.heads, args.head_dim, torch.bfloat16, args.causal, 0
    )
    config = HyperAttentionConfig(seed=0)
    with torch.no_grad():
        for _ in range(2):
            hf_hyper.hyper_attention(q, k, v, causal=args.causal, config=config)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            hf_hyper.hyper_attention(q, k, v, causal=args.causal, config=config)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
