"""What a CUDA-graph-replayed causal forward costs beyond its graph: the host's time
inside the call, the call timed by CUDA events, and the graph's replay alone.

    python benchmarks/graph_replay_time.py --seq-len 32768 --head-dim 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.fused.graphs import GRAPHS
from hf_hyper.eval.bench_attention import planted_inputs


def event_ms(fn, repeats: int) -> float:
    """Median CUDA-event time of fn(), each call alone on an idle GPU."""
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    q, k, v = planted_inputs(args.seq_len, args.heads, args.heads, args.head_dim,
                             torch.bfloat16, True, 0)  # fmt: skip
    config = HyperAttentionConfig(seed=0)

    def call() -> None:
        hf_hyper.hyper_attention(q, k, v, causal=True, config=config)

    with torch.no_grad():
        for _ in range(4):  # first sight, capture, replays
            call()
        torch.cuda.synchronize()
        host = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            call()
            host.append(time.perf_counter() - started)
            torch.cuda.synchronize()
        graph = next(reversed(GRAPHS.graphs.values())).graph
        print(f"n={args.seq_len} d={args.head_dim}: host time in the call "
              f"{statistics.median(host) * 1e3:.3f} ms, call {event_ms(call, args.repeats):.3f} ms "
              f"(events), replay alone {event_ms(graph.replay, args.repeats):.3f} ms; "
              f"{GRAPHS.stats}")  # fmt: skip


if __name__ == "__main__":
    main()
