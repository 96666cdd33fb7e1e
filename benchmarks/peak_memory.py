"""Where one HyperAttention call's peak GPU memory goes: the allocations alive at the
peak, largest first, each with the library lines that made it.

One causal forward (no autograd, no CUDA graphs) on `bench attention`'s planted inputs
runs once to compile, then again under torch's allocator history; replaying that
history finds the peak. The peak is printed beside the forward's memory bound (output +
16 bytes per token and query head).

    python benchmarks/peak_memory.py --length 131072 --head-dim 128 --kv-heads 32 \\
        --kmeans-iters 4
"""

from __future__ import annotations

import argparse

import torch

from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.eval.bench_attention import planted_inputs


def live_at_peak(snapshot: dict) -> tuple[int, list[dict]]:
    """(peak bytes above the recording's start, the allocations alive then)."""
    live: dict[int, dict] = {}
    current = peak = 0
    at_peak: list[dict] = []
    for trace in snapshot["device_traces"]:
        for event in trace:
            if event["action"] == "alloc":
                live[event["addr"]] = event
                current += event["size"]
                if current > peak:
                    peak, at_peak = current, list(live.values())
            elif event["action"] == "free_completed" and event["addr"] in live:
                current -= live.pop(event["addr"])["size"]
    return peak, at_peak


def library_frames(event: dict, depth: int = 3) -> str:
    frames = [f for f in event["frames"] if "hf_hyper" in f["filename"]][:depth]
    return " < ".join(
        f"{f['filename'].split('hf_hyper/')[-1]}:{f['line']} {f['name']}" for f in frames
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--kmeans-iters", type=int, default=0)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("peak_memory.py measures CUDA allocations; run it on a GPU machine")
    config = HyperAttentionConfig(cuda_graph_max_len=0, kmeans_iters=args.kmeans_iters)
    n = args.length
    q, k, v = planted_inputs(n, args.heads, args.kv_heads, args.head_dim, torch.bfloat16, True, 0)
    with torch.no_grad():
        hyper_attention(q, k, v, causal=True, config=config)
        torch.cuda.synchronize()
        torch.cuda.memory._record_memory_history(max_entries=200000)
        out = hyper_attention(q, k, v, causal=True, config=config)
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
    peak, at_peak = live_at_peak(snapshot)
    bound = out.numel() * out.element_size() + 16 * n * args.heads
    print(
        f"n={n} d={args.head_dim} heads={args.heads}/{args.kv_heads} "
        f"kmeans_iters={args.kmeans_iters}: peak {peak / 2**20:.1f} MiB, "
        f"bound {bound / 2**20:.1f} MiB; alive at the peak:"
    )
    for event in sorted(at_peak, key=lambda e: -e["size"])[: args.top]:
        print(f"  {event['size'] / 2**20:8.1f} MiB  {library_frames(event)}")


if __name__ == "__main__":
    main()
