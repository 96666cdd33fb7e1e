"""Causal ways to share exact keys among queries, or to sample the rest better, on a
real model's attention inputs: can any of them stand in for a per-query finder?

A kernel runs fast when many queries share the keys they attend exactly. In causal
attention that choice may only depend on earlier positions. On the lower-left rectangle
of the first causal cut (the second half's queries against the first half's keys,
float64, 4 sinks exact everywhere, the rest from a 256-key sample), columns
||O - O*||_F / ||V||_F, the mean over the seeds:

- `sample`: nothing else exact (uniform sample, as HyperAttention's);
- `norm sample`: the sample drawn with probability proportional to the key's norm,
  each draw weighted by 1 / (draws * probability) (an unbiased importance sample);
- `past heavy H`: the H keys of largest summed softmax mass over the 256 queries just
  before the cut (all earlier than every query served; heavy hitters), exact for all;
- `own heavy H`: the same from the served queries themselves (not causal: the bound of
  any choice shared by the whole rectangle);
- `query 16`: each query's own 16 k-means clusters (`tile_probes.py`'s path), the
  per-query finder these would replace;
- `prev tile T, P`: tiles of T consecutive positions attend the P clusters of largest
  summed estimated mass share over the T positions before the tile (causal);
- `own tile T, P`: the same clusters chosen by the tile's own queries (not causal).

    python research/causal_shared_choices.py --model DIR --gguf-file F.gguf \\
        --text kjv.txt --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse
import math

import torch
from captured_window import add_window_arguments, print_error_table
from tile_probes import BLOCK, ITERATIONS, PROBES, SAMPLE, SINKS, probe_estimate

from hf_hyper.attention.finders.kmeans import kmeans_clusters
from hf_hyper.attention.finders.query_clusters import log_sizes, plan_of_choice, probe_cluster_count

PAST_QUERIES = 256
HEAVY = (256, 1024)
TILES = (("prev", 64, 16), ("prev", 64, 64), ("prev", 16, 32), ("own", 64, 16))
COLUMNS = [
    "sample",
    "norm sample",
    *[f"{who} heavy {h}" for who in ("past", "own") for h in HEAVY],
    "query 16",
    *[f"{who} tile {t}, {p}" for who, t, p in TILES],
]


def sampled(scores, v, exact, proposal, gen) -> torch.Tensor:
    """Exact over `exact` [g, rows, nk], plus SAMPLE draws (with replacement) from the
    proposal [nk] for every row, each kept draw weighted by 1 / (SAMPLE * probability)."""
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    numerator, denominator = (weights * exact) @ v, (weights * exact).sum(-1)
    draws = torch.multinomial(proposal, SAMPLE, replacement=True, generator=gen)
    kept = weights[..., draws] * ~exact[..., draws] / (SAMPLE * proposal[draws])
    return (numerator + kept @ v[draws]) / (denominator + kept.sum(-1))[..., None]


def tile_choice(share_before, share, tile: int, probes: int, previous: bool) -> torch.Tensor:
    """Clusters [rows, probes] for tiles of `tile` consecutive rows: the top summed share
    over the tile's own rows, or over the `tile` rows before it (for the first tile, the
    last rows of share_before, the queries before the cut)."""
    rows = share.shape[0]
    n_tiles = math.ceil(rows / tile)
    padded = torch.nn.functional.pad(share, (0, 0, 0, n_tiles * tile - rows))
    per_tile = padded.view(n_tiles, tile, -1).sum(1)
    if previous:
        per_tile = torch.cat([share_before[-tile:].sum(0, keepdim=True), per_tile[:-1]])
    return per_tile.topk(probes, -1).indices.repeat_interleave(tile, 0)[:rows]


def rectangle_errors(q, k, v, scale: float, seeds: int) -> dict[str, float]:
    half, g = q.shape[2] // 2, q.shape[1] // k.shape[1]
    sq, v_sq = dict.fromkeys(COLUMNS, 0.0), 0.0
    for kv in range(k.shape[1]):
        heads = slice(kv * g, (kv + 1) * g)
        after, before = q[0, heads, half:].double(), q[0, heads, :half].double()
        keys, values = k[0, kv, :half].double(), v[0, kv, :half].double()
        scores = after @ keys.T * scale
        probs = torch.softmax(scores, -1)
        exact_out = probs @ values
        v_sq += seeds * values.pow(2).sum().item() * g * after.shape[1] / half
        # the queries just before the cut, each over the keys up to its own position
        past = before[:, -PAST_QUERIES:] @ keys.T * scale
        position = torch.arange(half - PAST_QUERIES, half)
        past = past.masked_fill(torch.arange(half) > position[:, None], -math.inf)
        column_mass = {"past": torch.softmax(past, -1).sum(1), "own": probs.sum(1)}
        sinks = torch.zeros(scores.shape, dtype=torch.bool)
        sinks[..., :SINKS] = True
        uniform = (torch.arange(half) >= SINKS).double()
        norm = keys.norm(dim=-1) * uniform
        n_clusters = probe_cluster_count(half, PROBES, BLOCK, 7)
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(seed)

            def add(column: str, out: torch.Tensor, exact_out: torch.Tensor = exact_out) -> None:
                sq[column] += (out.reshape(exact_out.shape) - exact_out).pow(2).sum().item()

            add("sample", sampled(scores, values, sinks, uniform / uniform.sum(), gen))
            add("norm sample", sampled(scores, values, sinks, norm / norm.sum(), gen))
            for who, mass in column_mass.items():
                for h in HEAVY:
                    chosen = mass.topk(h, -1).indices[:, None].expand(-1, scores.shape[1], -1)
                    exact = sinks.scatter(-1, chosen, True)
                    add(
                        f"{who} heavy {h}",
                        sampled(scores, values, exact, uniform / uniform.sum(), gen),
                    )
            torch.manual_seed(seed)
            centroids, assign, counts = kmeans_clusters(
                keys[None], n_clusters, ITERATIONS, torch.tensor([SINKS])
            )
            centroids, size = centroids[0].to(after.dtype), log_sizes(counts)[0]
            share_after = torch.softmax(scale * after @ centroids.T + size, -1)
            share_before = torch.softmax(scale * before @ centroids.T + size, -1)
            choices = {"query 16": share_after.topk(PROBES, -1).indices}
            for who, tile, probes in TILES:
                choices[f"{who} tile {tile}, {probes}"] = torch.stack([
                    tile_choice(share_before[h], share_after[h], tile, probes, who == "prev")
                    for h in range(g)
                ])  # fmt: skip
            for column, chosen in choices.items():
                plan = plan_of_choice(assign, counts, chosen[None])
                add(
                    column, probe_estimate(after[None], keys[None], values[None], plan, scale, seed)
                )
    return {column: math.sqrt(value / v_sq) for column, value in sq.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    print_error_table(
        args, COLUMNS, lambda q, k, v, scale: rectangle_errors(q, k, v, scale, args.seeds),
        args.seeds,
    )  # fmt: skip


if __name__ == "__main__":
    main()
