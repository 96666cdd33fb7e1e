"""Run HyperAttention on one long sequence and check it against exact attention on a
sample of rows (exact over all rows would be the O(n^2) cost we avoid).

    python examples/long_sequence.py --seq-len 131072 --heads 32 --head-dim 128

The defaults follow the device: on a GPU 131072 tokens, 32 heads of 128, bf16, causal
and not; on a CPU 16384 tokens, 8 heads of 64, float32, causal (about 30 seconds on 2
cores; the GPU sizes would take minutes and most of a small machine's memory).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.attention import attention_with_lse
from hf_hyper.attention.blockwise import causal_mask_fn
from hf_hyper.eval.common import show_defaults


def sampled_row_error(q, k, v, out, causal: bool, n_rows: int = 256) -> float:
    """sqrt(mean_i |o_i - o*_i|^2) / sqrt(mean_j |v_j|^2) over random rows i: the
    row-sampled estimate of ||O - O*||_F / ||V||_F when n_query == n_key."""
    b, h, n, d = q.shape
    rows = torch.randperm(n, device=q.device)[:n_rows].sort().values
    errs = []
    for r in rows.tolist():
        qz = q[:, :, r : r + 1].reshape(b * h, 1, 1, d)
        keys = r + 1 if causal else n
        kz = k[:, :, :keys].repeat_interleave(h // k.shape[1], 1).reshape(b * h, keys, d)
        vz = v[:, :, :keys].repeat_interleave(h // v.shape[1], 1).reshape(b * h, keys, -1)
        mask = causal_mask_fn(1, keys, q.device) if causal else None
        exact, _ = attention_with_lse(qz, kz, vz, d**-0.5, mask)
        errs.append((out[:, :, r].reshape(b * h, -1).float() - exact.view(b * h, -1)).pow(2).sum())
    v_rms = v.float().pow(2).sum() * (h // v.shape[1]) / n
    return (torch.stack(errs).sum() / len(errs) / v_rms).sqrt().item()


# the jobs' names, and torch's as aliases
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seq-len", type=int, default=131072 if gpu else 16384)
    p.add_argument("--heads", type=int, default=32 if gpu else 8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=128 if gpu else 64)
    p.add_argument(
        "--dtype", default="bf16" if gpu else "fp32", type=lambda t: DTYPE_NAMES.get(t, t),
        choices=["bf16", "fp16", "fp32"], help="as the jobs name them (bfloat16 etc. too)",
    )  # fmt: skip
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--causal", choices=["yes", "no", "both"], default="both" if gpu else "yes")
    show_defaults(p)
    args = p.parse_args()

    dtype = DTYPES[args.dtype]
    kv_heads = args.kv_heads or args.heads
    shape = (1, args.heads, args.seq_len, args.head_dim)
    q = torch.randn(shape, device=args.device, dtype=dtype)
    k = torch.randn(1, kv_heads, args.seq_len, args.head_dim, device=args.device, dtype=dtype)
    v = torch.randn_like(k)
    config = HyperAttentionConfig(seed=0)
    for causal in {"yes": [True], "no": [False], "both": [False, True]}[args.causal]:
        print(f"{args.seq_len} tokens, causal={causal} on {args.device} ...", flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.no_grad():
            out = hyper_attention(q, k, v, causal=causal, config=config)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed_ms = (time.perf_counter() - start) * 1e3
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        row = {
            "seq_len": args.seq_len,
            "heads": args.heads,
            "kv_heads": kv_heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype,
            "causal": causal,
            "elapsed_ms_first_call": round(elapsed_ms, 1),
            "peak_gib": None if peak is None else round(peak, 2),
            "finite": bool(torch.isfinite(out).all()),
            "err_over_v_sampled_rows": sampled_row_error(q, k, v, out, causal),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
