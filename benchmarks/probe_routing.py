"""Cluster probes with flat against two-level clusters, on a real model's attention inputs.

Flat probes (`cluster_probes` up to FLAT_MAX_CLUSTERS clusters) cluster each problem's
keys into C clusters and score every query against every centroid: n * C distances per
Lloyd iteration and n * C scores, and C grows with n, so the plan is quadratic. Two
levels (`two_level_clusters`) cut the keys into about sqrt(C) runs of sqrt(C) clusters,
and a query scores the clusters of its best runs only. On the lower-left rectangle of
the first causal cut (the second half's first --rows queries against the first half's
keys), with the sinks exact as the recursion serves them, this reports per layer:

- ||O - O*||_F / ||V||_F of the full estimator (probes + weighted sample), mean of 3 seeds;
- the share of each query's softmax mass outside the sinks that its chosen clusters
  hold (mean over queries), which is what the finder is for.

Variants: `flat`; `2-level, route R`: the clusters of enough runs to hold R times the
probes; `2-level, all runs`: every run's clusters scored (the clustering's own loss).

    python benchmarks/probe_routing.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 16384 --layers 3 9 15 --probes 16
"""

from __future__ import annotations

import argparse
import math

import torch
from captured_window import add_window_arguments, cut_rectangles, model_and_window

from hf_hyper import capture_attention
from hf_hyper.attention.cluster_probes import plan_probes, probe_cluster_count, probed_attention
from hf_hyper.attention.planning import Randomness
from hf_hyper.config import DEFAULT_SINK_TOKENS, HyperAttentionConfig

SEEDS = 3
ROUTES = (2, 4, 8)


def variants(clusters: int, probes: int) -> dict[str, dict]:
    groups = math.isqrt(clusters - 1) + 1
    fine = -(-clusters // groups)
    out = {"flat": dict(two_level=False)}
    for factor in ROUTES:
        out[f"2-level, route {factor}"] = dict(
            two_level=True, route_runs=max(2, -(-factor * probes // fine))
        )
    out["2-level, all runs"] = dict(two_level=True, route_runs=groups)
    return out


def rectangle_scores(rect, config: HyperAttentionConfig, probes: int, iterations: int, scale):
    """(squared error sums, mass-share sums) of each variant on one rectangle."""
    q, k, v = rect.q[None], rect.k[None], rect.v[None]
    n_key = k.shape[1]
    n_sink = DEFAULT_SINK_TOKENS
    sinks = torch.tensor([n_sink])
    clusters = probe_cluster_count(n_key, probes, config.block_size, config.lsh_num_projs)
    # the sinks' exact part, which the recursion merges in
    sink_scores = rect.scores[..., :n_sink]
    sink_lse = torch.logsumexp(sink_scores, -1)
    sink_out = torch.softmax(sink_scores, -1) @ rect.v[:n_sink]
    weight = torch.softmax(rect.scores, -1)
    outside_sinks = weight[..., n_sink:].sum(-1)
    errors, shares = {}, {}
    for name, routing in variants(clusters, probes).items():
        total = 0.0
        for seed in range(SEEDS):
            rng = Randomness(torch.Generator().manual_seed(seed), q.device)
            out, lse = probed_attention(
                q, k, v, q, k, scale, probes, clusters, iterations, config.sample_size, rng,
                sinks, **routing,
            )  # fmt: skip
            both = torch.logaddexp(lse[0], sink_lse)
            merged = out[0] * torch.exp(lse[0] - both)[..., None]
            merged = merged + sink_out * torch.exp(sink_lse - both)[..., None]
            total += (merged - rect.exact).pow(2).sum().item()
        errors[name] = total / SEEDS
        plan = plan_probes(q, k, probes, clusters, iterations, scale, sinks, **routing)
        chosen = plan.chosen[0]  # [g, rows, probes]
        in_chosen = (plan.assign[0][None, None, :, None] == chosen[:, :, None, :]).any(-1)
        in_chosen[..., :n_sink] = False
        share = (weight * in_chosen).sum(-1) / outside_sinks
        shares[name] = share.sum().item()
    return errors, shares, clusters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=16384)
    p.add_argument("--rows", type=int, default=512, help="queries measured after the cut")
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--kmeans-iters", type=int, default=4)
    args = p.parse_args()
    model, ids = model_and_window(args)
    config = HyperAttentionConfig()
    print(
        f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, {args.probes} probes, "
        f"{args.kmeans_iters} Lloyd iterations, {args.rows} rows, {SEEDS} seeds"
    )
    header_done = False

    def report(layer, q, k, v, *, causal, scale):
        nonlocal header_done
        errors, shares, rows, v_sq = {}, {}, 0, 0.0
        for rect in cut_rectangles(q, k, v, scale, args.rows):
            err, share, clusters = rectangle_scores(
                rect, config, args.probes, args.kmeans_iters, scale
            )
            for name in err:
                errors[name] = errors.get(name, 0.0) + err[name]
                shares[name] = shares.get(name, 0.0) + share[name]
            rows += rect.q.shape[0] * rect.q.shape[1]
            v_sq += rect.v_sq
        if not header_done:
            print(f"\n{clusters} clusters per rectangle; error / mass share of the probes\n")
            print("| layer | " + " | ".join(errors) + " |")
            print("|---" * (1 + len(errors)) + "|")
            header_done = True
        cells = [f"{math.sqrt(errors[n] / v_sq):.4f} / {shares[n] / rows:.3f}" for n in errors]
        print(f"| {layer} | " + " | ".join(cells) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)


if __name__ == "__main__":
    main()
