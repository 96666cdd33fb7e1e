"""Where the fused HyperAttention forward (or forward+backward) spends its time (torch
profiler, CUDA kernels).

    python benchmarks/profile_fused.py --seq-len 131072 --head-dim 128 --causal [--backward]
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
    p.add_argument("--backward", action="store_true", help="profile forward+backward")
    args = p.parse_args()
    q, k, v = planted_inputs(
        args.seq_len, args.heads, args.heads, args.head_dim, torch.bfloat16, args.causal, 0
    )
    grad = torch.randn_like(q)
    for t in (q, k, v):
        t.requires_grad_(args.backward)
    # eager launches: a graph replay would show as one launch
    config = HyperAttentionConfig(seed=0, cuda_graph_max_len=0)

    def run() -> None:
        with torch.set_grad_enabled(args.backward):
            out = hf_hyper.hyper_attention(q, k, v, causal=args.causal, config=config)
        if args.backward:
            out.backward(grad)

    for _ in range(2):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
    # launches, and GPU-busy time against the span they ran in: the gaps are host time
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kernels) / 1e3
    span = (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) / 1e3
    print(f"{len(kernels)} kernels, GPU busy {busy:.3f} ms of a {span:.3f} ms span")


if __name__ == "__main__":
    main()
