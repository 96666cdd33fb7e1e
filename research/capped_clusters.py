"""Per-query clusters with a size cap: does bounding each query's exact keys cost
accuracy on a real model, and how much work does it take off the speed benchmark?

Each query attends its `probes` clusters of largest estimated mass, |c| exp(scale q.mu_c),
so large clusters are favoured and a query's exact keys have no bound: on the speed
benchmark's planted inputs they come to about 3x the block a query is meant to attend
(`probe_work_131k_cpu.md`). Here clusters larger than f times the problem's mean cluster
size are cut into near-equal runs of their sequence-ordered keys, each run a cluster
with its own mean as centroid, before the queries choose; a query then attends at most
about probes * f * mean keys exactly.

Two measurements (CPU, float64 attention, 4 sinks, the 256-key sample, 2 seeds):
- `--model ...`: on a real model's first-cut rectangles (as `tile_probes.py`), the
  error ||O - O*||_F / ||V||_F and the exact keys per query for each cap;
- `--planted N`: on the benchmark's planted inputs (one head, d=128), the exact keys per
  query of the top causal level's problem (N/2 queries against the N/2 keys before them).

    python research/capped_clusters.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --layers 5 12 18 25
    python research/capped_clusters.py --planted 131072
    python research/capped_clusters.py --speed 32768 131072 [--key-budget 1.5]  # on CUDA

`--speed` times the library's probes (the accurate preset, 32 heads, d=128, causal,
bf16) beside cuDNN with its k-means swapped for one followed by the cut
(`capped_kmeans`, batched, shapes fixed by the inputs so CUDA graphs still capture):
what a cap would buy the fused path before the library has one.
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from unittest import mock

import torch
from captured_window import (
    add_window_arguments,
    plan_errors,
    planted_top_level,
    print_error_table,
    print_keys_summary,
)
from tile_probes import probe_estimate

from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.attention import clear_cuda_graphs
from hf_hyper.attention.finders import query_clusters
from hf_hyper.attention.finders.kmeans import kmeans_clusters
from hf_hyper.attention.finders.query_clusters import (
    ProbePlan,
    log_sizes,
    plan_of_choice,
    probe_cluster_count,
)
from hf_hyper.attention.fused.bucket_sort import stable_bucket_argsort
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import environment, time_cuda

SEEDS = 2
SINKS = 4
PROBES = 4  # the accurate preset: 4 probes, block 512, 2 Lloyd iterations
BLOCK = 512
ITERATIONS = 2
# (f, probes): clusters above f x the mean size are cut (None: not), then each query
# attends its `probes` best; the last attends twice as many clusters of at most the
# mean size
CAPS: list[tuple[float | None, int]] = [(None, PROBES), (2.0, PROBES), (1.0, PROBES), (1.0, 8)]


def name_of(cap: float | None, probes: int) -> str:
    return ("uncapped" if cap is None else f"cap {cap:g}x") + f", {probes} probes"


def cut_limit(cap: float, n_key: int, clusters: int) -> int:
    """The most keys a cluster keeps: cap x the mean size."""
    return max(1, math.ceil(cap * n_key / clusters))


def cut_large_clusters(
    k: torch.Tensor, assign: torch.Tensor, counts: torch.Tensor, limit: int,
    skip_keys: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Clusters of more than `limit` keys cut into near-equal runs of their keys in
    sequence order, each run a cluster with its keys' mean as centroid, for z problems
    (k [z, nk, d], assign [z, nk], counts [z, c], skip_keys [z] leading keys uncounted)
    -> (centroids, assign, counts). In torch ops without a host sync: the clusters
    become c + nk // limit, the parts a problem does not use left empty (never chosen
    before a non-empty one)."""
    z, n_key = assign.shape
    n_clusters = counts.shape[1]
    order, starts = stable_bucket_argsort(assign, n_clusters)
    order, starts = order.long(), starts.long()
    totals = starts[:, 1:] - starts[:, :-1]
    parts = torch.clamp(torch.ceil(totals / limit), min=1).long()
    part_len = torch.ceil(totals.clamp_min(1) / parts).long()
    first_part = torch.cumsum(parts, 1) - parts
    cluster = torch.gather(assign, 1, order)
    within = torch.arange(n_key, device=k.device) - torch.gather(starts, 1, cluster)
    sorted_id = torch.gather(first_part, 1, cluster) + within // torch.gather(part_len, 1, cluster)
    new_assign = torch.empty_like(assign).scatter_(1, order, sorted_id)
    n_parts = n_clusters + n_key // limit
    skip = torch.zeros(z, device=k.device) if skip_keys is None else skip_keys.to(k.device)
    # centroids in float32 at least (bf16 keys), float64 where the study computes in it
    acc = torch.promote_types(k.dtype, torch.float32)
    counted = (torch.arange(n_key, device=k.device)[None] >= skip[:, None]).to(acc)
    new_counts = torch.zeros(z, n_parts, dtype=acc, device=k.device)
    new_counts.scatter_add_(1, new_assign, counted)
    sums = torch.zeros(z, n_parts, k.shape[2], dtype=acc, device=k.device)
    index = new_assign[..., None].expand(-1, -1, k.shape[2])
    sums.scatter_add_(1, index, k.to(acc) * counted[..., None])
    return sums / new_counts.clamp_min(1)[..., None], new_assign, new_counts.float()


def capped_kmeans(cap: float):
    """The library's kmeans_clusters followed by the cut at cap x the mean size."""

    def clusters_then_cut(k, clusters, iterations, skip_keys=None, *, kernels=True):
        _, assign, counts = kmeans_clusters(k, clusters, iterations, skip_keys, kernels=kernels)
        limit = cut_limit(cap, k.shape[1], counts.shape[1])
        return cut_large_clusters(k, assign, counts, limit, skip_keys)

    return clusters_then_cut


def speed(lengths: list[int], key_budget: float) -> None:
    """Same-run times of the probes with and without the cut, beside cuDNN."""
    print(environment())
    print("\n| n | cuda_graph_max_len | setting | ms | vs cuDNN | peak GiB |")
    print("|---|---|---|---|---|---|")
    for n in lengths:
        speed_at(n, key_budget)
        torch.cuda.empty_cache()


def speed_at(n: int, key_budget: float) -> None:
    q, k, v = planted_inputs(n, 32, 32, 128, torch.bfloat16, True, 0)

    def exact():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        cudnn = time_cuda(exact)
    for graph_len in (2 * n,):  # replayed from a graph, as the library does up to 256k
        config = HyperAttentionConfig(
            kmeans_iters=ITERATIONS, cluster_probes=PROBES, block_size=BLOCK,
            cuda_graph_max_len=graph_len, cluster_key_budget=key_budget,
        )  # fmt: skip

        def probes(config=config):
            return hyper_attention(q, k, v, causal=True, config=config)

        for cap in (None, 2.0, 1.0):
            clear_cuda_graphs()
            swap = query_clusters.kmeans_clusters if cap is None else capped_kmeans(cap)
            with torch.no_grad(), mock.patch.object(query_clusters, "kmeans_clusters", swap):
                timing = time_cuda(probes, warmup=3, repeats=5)
            ratio = cudnn.ms / timing.ms
            print(f"| {n} | {graph_len} | {name_of(cap, PROBES)} | {timing.ms:.1f} | "
                  f"{ratio:.2f}x | {timing.peak_gib:.2f} |", flush=True)  # fmt: skip


def capped_plan(
    q: torch.Tensor, k: torch.Tensor, scale: float, cap: float | None, probes: int
) -> ProbePlan:
    """The plan of `probes` clusters a query for q [1, g, rows, d], k [1, nk, d] with
    clusters above cap x the mean size cut first (None: as the library plans; the
    cluster count is the library's for PROBES)."""
    n_key, dim = k.shape[1], k.shape[2]
    clusters = probe_cluster_count(n_key, PROBES, BLOCK, 7)
    sinks = torch.tensor([SINKS])
    centroids, assign, counts = kmeans_clusters(k, clusters, ITERATIONS, sinks)
    if cap is not None:
        limit = cut_limit(cap, n_key, clusters)
        centroids, assign, counts = cut_large_clusters(k, assign, counts, limit, sinks)
    rows = q.reshape(1, -1, dim)
    mass = scale * rows @ centroids.to(q.dtype).transpose(-1, -2) + log_sizes(counts)[:, None]
    chosen = mass.topk(probes, dim=-1).indices
    return plan_of_choice(assign, counts, chosen.view(*q.shape[:3], probes))


def exact_keys_per_query(plan: ProbePlan) -> torch.Tensor:
    g = plan.chosen.shape[1]
    sizes = torch.gather(plan.counts[:, None].expand(-1, g, -1), 2,
                         plan.chosen.reshape(1, g, -1).long())  # fmt: skip
    return sizes.view(plan.chosen.shape).sum(-1).flatten() + SINKS


KEYS_SEEN: list[dict[str, float]] = []


def capped_errors(q, k, v, scale: float) -> dict[str, float]:
    """Each cap's error over the KV heads' rectangles (mean of the seeds); the keys per
    query go to KEYS_SEEN."""
    plans = {
        name_of(cap, probes): partial(capped_plan, scale=scale, cap=cap, probes=probes)
        for cap, probes in CAPS
    }
    estimate = partial(probe_estimate, scale=scale)
    errors, keys = plan_errors(q, k, v, scale, plans, estimate, exact_keys_per_query, SEEDS)
    KEYS_SEEN.append(keys)
    return errors


def planted_keys(n: int) -> None:
    qz, kz, scale = planted_top_level(n)
    half = n // 2
    print(f"planted inputs, n={n}: the top level's problem ({half} queries, {half} keys),"
          f" block {BLOCK}, {ITERATIONS} Lloyd iterations, one head\n")  # fmt: skip
    print("| clusters | exact keys per query: mean | 99th percentile | vs uncapped |")
    print("|---|---|---|---|")
    base = None
    for cap, probes in CAPS:
        keys = exact_keys_per_query(capped_plan(qz, kz, scale, cap, probes)).double()
        base = base or keys.mean().item()
        mean, p99 = keys.mean().item(), keys.quantile(0.99).item()
        name = name_of(cap, probes)
        print(f"| {name} | {mean:.0f} | {p99:.0f} | {mean / base:.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192, required=False)
    p.add_argument("--planted", type=int, default=0, help="only the planted inputs' keys")
    p.add_argument("--speed", type=int, nargs="*", default=[], help="time these lengths (CUDA)")
    p.add_argument("--key-budget", type=float, default=0.0,
                   help="--speed: the probes' cluster_key_budget (0: none)")  # fmt: skip
    args = p.parse_args()
    if not (args.speed or args.planted) and not (args.model and args.text):
        p.error("give --model and --text (a real model's layers), or --planted N, or --speed N")
    if args.speed:
        speed(args.speed, args.key_budget)
        return
    if args.planted:
        planted_keys(args.planted)
        return
    columns = [name_of(cap, probes) for cap, probes in CAPS]
    caption = f"||O - O*||_F / ||V||_F, block {BLOCK}, {ITERATIONS} iterations"
    print_error_table(args, columns, capped_errors, SEEDS, caption)
    print_keys_summary(KEYS_SEEN)


if __name__ == "__main__":
    main()
