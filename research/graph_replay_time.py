"""What a CUDA-graph-replayed causal forward costs beyond its graph: the host's time
inside the call, the call timed by CUDA events, and the graph's replay alone.

    python research/graph_replay_time.py --seq-len 32768 --head-dim 64
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
from hf_hyper.eval.timing import time_cuda


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
        call_ms = time_cuda(call, warmup=0, repeats=args.repeats).ms
        replay_ms = time_cuda(graph.replay, warmup=0, repeats=args.repeats).ms
        print(f"n={args.seq_len} d={args.head_dim}: host time in the call "
              f"{statistics.median(host) * 1e3:.3f} ms, call {call_ms:.3f} ms "
              f"(events), replay alone {replay_ms:.3f} ms; "
              f"{GRAPHS.stats}")  # fmt: skip


if __name__ == "__main__":
    main()
