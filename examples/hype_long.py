"""HyPE (ALiBi preset) on one long bf16 sequence through SDPA and HyperAttention.

    python examples/hype_long.py --seq-len 131072

The defaults follow the device: on a GPU 131072 tokens and 32 heads of 128; on a CPU
8192 tokens and 4 heads of 64 (about 10 seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.eval.common import show_defaults
from hf_hyper.hype import HyPEConfig, hype_attention


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seq-len", type=int, default=131072 if gpu else 8192)
    p.add_argument("--heads", type=int, default=32 if gpu else 4)
    p.add_argument("--head-dim", type=int, default=128 if gpu else 64)
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    show_defaults(p)
    args = p.parse_args()
    shape = (1, args.heads, args.seq_len, args.head_dim)
    q, k, v = (torch.randn(shape, device=args.device, dtype=torch.bfloat16) for _ in range(3))
    mu, tau = HyPEConfig.alibi(args.heads).per_head(args.heads)
    runs = [("sdpa", 1024), ("hyper", None)]
    for kernel, chunk in runs:
        print(f"{args.seq_len} tokens through {kernel} on {args.device} ...", flush=True)
        start = time.perf_counter()
        with torch.no_grad():
            out = hype_attention(
                q,
                k,
                v,
                causal=True,
                mu=mu,
                tau=tau,
                kernel=kernel,
                chunk_size=chunk,
                hyper_config=HyperAttentionConfig(seed=0),
            )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        print(
            json.dumps(
                {
                    "seq_len": args.seq_len,
                    "kernel": kernel,
                    "chunk_size": chunk,
                    "dtype": "bfloat16",
                    "first_call_ms": round((time.perf_counter() - start) * 1e3, 1),
                    "finite": bool(torch.isfinite(out).all()),
                }
            )
        )


if __name__ == "__main__":
    main()
