"""How much exact work per-query clusters plan for the speed benchmark's inputs: the
floor under the probes' segment kernel, whatever its efficiency.

For each level of the causal recursion at --length (problems of s queries against the s
keys before them, s from n/2 down to min_seq_len), the plan of two of the level's
problems (one head, float32, torch ops) gives the keys each query attends exactly and the
work the segment kernel is handed (its tiles' rows, padding included, times their
clusters' keys). Summed over levels and scaled to 32 heads at d=128, that work in
tensor-core FLOPs (QK and PV) says how fast the kernel could be at a given rate.

    python research/probe_work.py --length 131072
"""

from __future__ import annotations

import argparse

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.finders.query_clusters import (
    _rank_tiles,
    plan_probes,
    probe_cluster_count,
    segment_tile_rows,
)
from hf_hyper.eval.bench_attention import planted_inputs

HEADS, DIM = 32, 128
SAMPLED_PROBLEMS = 2


def level_work(q, k, size: int, args, defaults) -> tuple[int, float, float, float]:
    """(clusters, exact keys per query, segment-kernel key-rows, exact key-rows) of one
    level, the key-rows summed over all its problems (scaled from the sampled ones)."""
    starts = list(range(size, q.shape[0], 2 * size))
    sampled = starts[:SAMPLED_PROBLEMS]
    clusters = probe_cluster_count(size, args.probes, args.block_size, defaults.lsh_num_projs)
    padded = exact = 0.0
    for s0 in sampled:
        qq, kk = q[s0 : s0 + size][None, None], k[s0 - size : s0][None]
        sinks = torch.tensor([defaults.sink_tokens])
        plan = plan_probes(qq, kk, args.probes, clusters, args.iterations, DIM**-0.5, sinks,
                           kmeans_kernels=False)  # fmt: skip
        exact += plan.counts[0][plan.chosen[0, 0]].sum().item()
        tile = segment_tile_rows(size, clusters)
        for rank in range(args.probes):
            pack, _, seg_len = _rank_tiles(plan, rank, tile)
            used = pack.slot_query.view(1, -1, tile)[..., 0] < size
            padded += (seg_len * used).sum().item() * tile
    scale = len(starts) / len(sampled)
    return clusters, exact / (len(sampled) * size), padded * scale, exact * scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--iterations", type=int, default=2)
    args = p.parse_args()
    defaults = HyperAttentionConfig()
    q, k, _ = planted_inputs(args.length, 1, 1, DIM, torch.float32, True, 0, device="cpu")
    q, k = q[0, 0], k[0, 0]
    print(f"planted inputs, n={args.length}, {args.probes} probes, block_size "
          f"{args.block_size}, {args.iterations} Lloyd iterations, {SAMPLED_PROBLEMS} problems "
          f"a level sampled, one head\n")  # fmt: skip
    print("| problem size | problems | clusters | exact keys per query | kernel work / exact |")
    print("|---|---|---|---|---|")
    total = 0.0
    size = args.length // 2
    while size >= defaults.min_seq_len:
        clusters, per_query, padded, exact = level_work(q, k, size, args, defaults)
        problems = len(range(size, args.length, 2 * size))
        print(f"| {size} | {problems} | {clusters} | {per_query:.0f} | {padded / exact:.2f} |")
        total += padded
        size //= 2
    flop = total * DIM * 4 * HEADS  # QK and PV, 2 FLOPs a multiply-add each
    at_400, at_200 = flop / 400e12 * 1e3, flop / 200e12 * 1e3
    print(f"\nsegment-kernel work at {HEADS} heads, d={DIM}: {flop / 1e12:.1f} TFLOP; "
          f"{at_400:.0f} ms at 400 TFLOP/s, {at_200:.0f} ms at 200")  # fmt: skip


if __name__ == "__main__":
    main()
