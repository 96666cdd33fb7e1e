"""How many keys per-query clusters attend exactly, and what that buys, on a real
model's attention inputs.

A query attends its `cluster_probes` clusters of largest estimated mass, |c| exp(s q.mu),
and that estimate favours large clusters, so the keys a query attends exactly (what the
probes' kernels pay for) can exceed `cluster_probes` mean clusters. On
the lower-left rectangle of the first causal cut (as `kmeans_fit.py`), each setting
reports the mean and 99th percentile of the keys each query attends exactly (as a
multiple of its block_size), the mean size of a query's chosen clusters over the mean
cluster size (1: no preference for large ones), the largest cluster, and
||O - O*||_F / ||V||_F of the non-causal call (the mean over two seeds; torch ops, float64).

    python research/cluster_work.py --model DIR --gguf-file F.gguf --text python311_docs.txt \\
        --length 8192 --layers 2 9 16 23 29
"""

from __future__ import annotations

import argparse

import torch
from captured_window import add_window_arguments, first_cut_errors, model_and_window

from hf_hyper import capture_attention
from hf_hyper.attention.finders.query_clusters import plan_probes, probe_cluster_count
from hf_hyper.config import HyperAttentionConfig

# (probes, block_size) pairs; 2 Lloyd iterations each, as the accurate setting
SETTINGS = [(4, 512), (8, 512), (16, 512)]
SEEDS = 2
ITERATIONS = 2


def exact_keys(q, k, probes: int, block_size: int, scale: float) -> tuple[float, float, float, int]:
    """(mean, 99th percentile of the keys each query attends exactly, mean cluster size,
    largest cluster) on the first cut's rectangle of captured q [1, hq, n, d], k [1, hk,
    n, d]; the sinks left out as the default config does."""
    half = q.shape[2] // 2
    g = q.shape[1] // k.shape[1]
    qz = q[0, :, half:].float().reshape(k.shape[1], g, half, -1)
    kz = k[0, :, :half].float()
    defaults = HyperAttentionConfig()
    clusters = probe_cluster_count(half, probes, block_size, defaults.lsh_num_projs)
    sinks = torch.full((kz.shape[0],), defaults.sink_tokens)
    plan = plan_probes(qz, kz, probes, clusters, ITERATIONS, scale, sinks, kmeans_kernels=False)
    chosen = plan.chosen.reshape(kz.shape[0], -1)
    sizes = torch.gather(plan.counts, 1, chosen).view(*chosen.shape[:1], -1, probes).sum(-1)
    mean_size = plan.counts.sum().item() / plan.counts.numel()
    return sizes.mean().item(), sizes.quantile(0.99).item(), mean_size, int(plan.counts.max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    args = p.parse_args()
    model, ids = model_and_window(args)
    print(f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, {SEEDS} seeds, "
          f"{ITERATIONS} Lloyd iterations; keys: exact per query / block_size")  # fmt: skip
    print("\n| layer | probes | block_size | clusters | keys mean | keys p99 | chosen / mean "
          "cluster | largest cluster | error |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip

    def report(layer, q, k, v, *, causal, scale):
        settings = {
            (probes, block): (lambda seed, probes=probes, block=block: HyperAttentionConfig(
                seed=seed, backend="torch", min_seq_len=8, kmeans_iters=ITERATIONS,
                cluster_probes=probes, block_size=block))
            for probes, block in SETTINGS
        }  # fmt: skip
        errors = first_cut_errors(q, k, v, scale, settings, SEEDS)
        for (probes, block), error in errors.items():
            mean, p99, mean_size, largest = exact_keys(q, k, probes, block, scale)
            clusters = probe_cluster_count(
                q.shape[2] // 2, probes, block, HyperAttentionConfig().lsh_num_projs
            )
            print(f"| {layer} | {probes} | {block} | {clusters} | {mean / block:.2f} "
                  f"| {p99 / block:.2f} | {mean / (probes * mean_size):.2f} | {largest} "
                  f"| {error:.4f} |", flush=True)  # fmt: skip

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)


if __name__ == "__main__":
    main()
