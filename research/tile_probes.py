"""Cluster probes chosen per query tile instead of per query, on a real model's
attention inputs: how much of the per-query probes' accuracy survives when a tile of T
queries shares its exact clusters (which is what lets an attention kernel use large
tiles).

On the lower-left rectangle of the first causal cut (as `bucket_finders.py`), float64,
4 sinks, each problem's keys in k-means clusters of about 16 keys
(`probe_cluster_count` for 16 probes, 4 Lloyd iterations), the sample of 256 keys per
problem drawn and weighed as `cluster_probes` does. Columns, ||O - O*||_F / ||V||_F, the
mean over three seeds:

- `lsh`, `kmeans blocks`, `probes 16`: the library's settings (`HyperAttentionConfig`);
- `query P`: each query's own P clusters of largest estimated mass (this script's
  path, to compare with `probes 16`);
- `tile T, P`: the queries ordered by their best cluster (clusters in the angular-LSH
  order of their centroids, so neighbours are near), cut into tiles of T, each tile
  attending the P clusters of largest summed estimated mass share over its queries.

`keys/query` below the table: the mean count of exactly attended keys per query.

The tile choice depends on every query of the tile, so it fits bidirectional
attention; in causal attention it would let later positions steer earlier outputs.

    python research/tile_probes.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse
import math

import torch
from captured_window import (
    add_window_arguments,
    cut_rectangles,
    first_cut_errors,
    print_error_table,
    rectangle_config,
)

from hf_hyper.attention import angular_lsh_rank, merge_by_lse
from hf_hyper.attention.finders.kmeans import kmeans_clusters
from hf_hyper.attention.finders.query_clusters import (
    ProbePlan,
    cluster_attention,
    log_sizes,
    plan_of_choice,
    probe_cluster_count,
    sampled_rest_attention,
)
from hf_hyper.attention.planning import Randomness

SEEDS = 3
SINKS = 4
PROBES = 16  # the cluster count follows 16 probes: about 16 keys a cluster
ITERATIONS = 4
SAMPLE = 256
BLOCK = 256
LIBRARY = {
    "lsh": {},
    "kmeans blocks": dict(kmeans_iters=4),
    "probes 16": dict(kmeans_iters=4, cluster_probes=16),
}
# (tile rows T, clusters P); T = 1: each query's own clusters
PROTOTYPES = [(1, 16), (64, 16), (64, 32), (64, 64), (128, 32), (128, 64)]


def name_of(tile: int, probes: int) -> str:
    return f"query {probes}" if tile == 1 else f"tile {tile}, {probes}"


def tile_union_sizes(q: torch.Tensor, k: torch.Tensor, scale: float, tiles: list[int],
                     seed: int) -> dict[int, float]:  # fmt: skip
    """For tiles of T queries ordered by their best cluster: the mean number of distinct
    clusters among the tile's per-query top PROBES (what a kernel that runs each query's
    own probes in T-row tiles, masking the clusters a row did not choose, walks)."""
    n_key, dim = k.shape[1], k.shape[2]
    clusters = probe_cluster_count(n_key, PROBES, BLOCK, 7)
    centroids, _, counts = kmeans_clusters(k, clusters, ITERATIONS, torch.tensor([SINKS]))
    centroids = centroids.to(q.dtype)
    mass = scale * q.reshape(1, -1, dim) @ centroids.transpose(-1, -2) + log_sizes(counts)[:, None]
    chosen = mass.topk(PROBES, dim=-1).indices[0]  # [rows, PROBES]
    planes = torch.randn(dim, 7, generator=torch.Generator().manual_seed(seed), dtype=k.dtype)
    position = angular_lsh_rank(centroids, planes).long().argsort(-1).argsort(-1)[0]
    order = position[chosen[:, 0]].argsort(stable=True)
    sizes = {}
    for tile in tiles:
        n_tiles = math.ceil(order.numel() / tile)
        member = torch.zeros(n_tiles, clusters, dtype=torch.bool)
        tile_of = torch.arange(order.numel()) // tile
        member[tile_of[:, None].expand(-1, PROBES), chosen[order]] = True
        sizes[tile] = member.sum(1).double().mean().item()
    return sizes


def tile_plan(q: torch.Tensor, k: torch.Tensor, tile: int, probes: int, scale: float,
              seed: int) -> ProbePlan:  # fmt: skip
    """The probes' plan for q [1, g, rows, d], k [1, nk, d] with each tile of `tile`
    queries sharing the `probes` clusters of largest summed estimated mass share."""
    n_key, dim = k.shape[1], k.shape[2]
    clusters = probe_cluster_count(n_key, PROBES, BLOCK, 7)
    sinks = torch.tensor([SINKS])
    centroids, assign, counts = kmeans_clusters(k, clusters, ITERATIONS, sinks)
    centroids = centroids.to(q.dtype)
    log_size = log_sizes(counts)
    rows = q.reshape(1, -1, dim)
    mass = scale * rows @ centroids.transpose(-1, -2) + log_size[:, None]  # [1, rows, c]
    if tile == 1:
        chosen = mass.topk(probes, dim=-1).indices
    else:
        planes = torch.randn(dim, 7, generator=torch.Generator().manual_seed(seed), dtype=k.dtype)
        # each cluster's place in the LSH order of the centroids: near clusters adjacent
        position = angular_lsh_rank(centroids, planes).long().argsort(-1).argsort(-1)
        best = torch.gather(position, 1, mass.argmax(-1))
        order = best.argsort(dim=-1, stable=True)[0]
        share = torch.softmax(mass[0, order], -1)  # each query's estimated mass share
        n_tiles = math.ceil(share.shape[0] / tile)
        padded = torch.nn.functional.pad(share, (0, 0, 0, n_tiles * tile - share.shape[0]))
        tile_choice = padded.view(n_tiles, tile, -1).sum(1).topk(probes, dim=-1).indices
        chosen = torch.empty(share.shape[0], probes, dtype=torch.int64)
        chosen[order] = tile_choice.repeat_interleave(tile, 0)[: share.shape[0]]
        chosen = chosen[None]
    return plan_of_choice(assign, counts, chosen.view(*q.shape[:3], probes))


def probe_estimate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: ProbePlan,
                   scale: float, seed: int) -> torch.Tensor:  # fmt: skip
    """The probes' estimate for q [1, g, rows, d] against k, v [1, nk, d] with the chosen
    clusters of `plan` exact, the SINKS exact for every query and the sample of SAMPLE
    keys for the rest, merged through their log-sum-exps -> [1, g, rows, dv]."""
    sinks = torch.tensor([SINKS])
    out, lse = cluster_attention(q, k, v, plan, scale, sinks)
    rng = Randomness(torch.Generator().manual_seed(seed), torch.device("cpu"))
    out, lse = merge_by_lse(
        out, lse, *sampled_rest_attention(q, k, v, plan, scale, SAMPLE, rng, sinks)
    )
    s = q @ k[:, :SINKS].transpose(-1, -2) * scale
    out, _ = merge_by_lse(out, lse, torch.softmax(s, -1) @ v[:, :SINKS], torch.logsumexp(s, -1))
    return out


def prototype_errors(q, k, v, scale: float) -> tuple[dict[str, float], dict[str, float]]:
    """Each prototype's error over all KV heads' rectangles, and its exact keys per query."""
    half = q.shape[2] // 2
    errors, keys = {}, {}
    for tile, probes in PROTOTYPES:
        total_err = 0.0
        total_keys = []
        for seed in range(SEEDS):
            err_sq, v_sq = 0.0, 0.0
            for rect in cut_rectangles(q, k, v, scale, half):
                qz, kz, vz = rect.q[None], rect.k[None], rect.v[None]
                plan = tile_plan(qz, kz, tile, probes, scale, seed)
                out = probe_estimate(qz, kz, vz, plan, scale, seed)
                err_sq += (out[0] - rect.exact).pow(2).sum().item()
                v_sq += rect.v_sq
                g = qz.shape[1]
                sizes = torch.gather(plan.counts[:, None].expand(-1, g, -1), 2,
                                     plan.chosen.reshape(1, g, -1).long())  # fmt: skip
                total_keys.append(sizes.view(plan.chosen.shape).sum(-1).mean().item())
            total_err += math.sqrt(err_sq / v_sq)
        errors[name_of(tile, probes)] = total_err / SEEDS
        keys[name_of(tile, probes)] = sum(total_keys) / len(total_keys) + SINKS
    return errors, keys


KEYS_SEEN: list[dict[str, float]] = []


def rectangle_errors(q, k, v, scale: float) -> dict[str, float]:
    settings = {
        name: (lambda seed, extra=extra: rectangle_config(seed, **extra))
        for name, extra in LIBRARY.items()
    }
    errors = first_cut_errors(q, k, v, scale, settings, SEEDS)
    proto, keys = prototype_errors(q, k, v, scale)
    KEYS_SEEN.append(keys)
    return {**errors, **proto}


UNION_TILES = [16, 32, 64, 128]


def union_columns(q, k, v, scale: float) -> dict[str, float]:
    """Mean distinct clusters per tile over the KV heads' rectangles (seed 0)."""
    half = q.shape[2] // 2
    parts = [
        tile_union_sizes(rect.q[None], rect.k[None], scale, UNION_TILES, 0)
        for rect in cut_rectangles(q, k, v, scale, half)
    ]
    return {f"T={t}": sum(p[t] for p in parts) / len(parts) for t in UNION_TILES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    p.add_argument(
        "--union",
        action="store_true",
        help="only the per-query probes' distinct clusters per tile of T queries",
    )
    args = p.parse_args()
    if args.union:
        columns = [f"T={t}" for t in UNION_TILES]
        caption = f"distinct clusters among a tile's per-query top {PROBES} (of about 16 keys)"
        print_error_table(args, columns, union_columns, 1, caption)
        return
    columns = list(LIBRARY) + [name_of(t, c) for t, c in PROTOTYPES]
    print_error_table(args, columns, rectangle_errors, SEEDS)
    print("\nkeys/query (exact, sinks included), mean over layers:")
    for name in KEYS_SEEN[0]:
        mean = sum(layer[name] for layer in KEYS_SEEN) / len(KEYS_SEEN)
        print(f"- {name}: {mean:.0f}")


if __name__ == "__main__":
    main()
