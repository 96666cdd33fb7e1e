"""Per-query clusters under a key budget: does bounding each query's exact keys by
dropping clusters (instead of cutting them, as `capped_clusters.py` does) keep a real
model's accuracy, and how much work does it take off the speed benchmark?

A query ranks the clusters by estimated mass, |c| exp(scale q.mu_c), and attends its
`probes` best exactly, so large clusters win and its exact keys have no bound: about 3x
the nominal block on the planted inputs (`probe_work_131k_cpu.md`). The cut of large
clusters bounded them but added clusters to every later step of the plan and bought no
speed (`capped_clusters_speed_h200.md`). Here the clusters stay as k-means leaves them;
each query walks its `candidates` best, best first, and keeps a cluster while its exact
keys stay within f x the nominal count (probes x the mean cluster size); the best cluster
is always kept. The clusters it drops join the keys the sample stands for, so the
estimate keeps its unbiased weight.

Two measurements (CPU, float64 attention, 4 sinks, the 256-key sample, 2 seeds):
- `--model ...`: on a real model's first-cut rectangles (as `tile_probes.py`), the error
  ||O - O*||_F / ||V||_F and the exact keys per query for each budget;
- `--planted N`: on the benchmark's planted inputs (one head, d=128), the exact keys per
  query of the top causal level's problem (N/2 queries against the N/2 keys before them).

    python research/key_budget.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --layers 5 12 18 25
    python research/key_budget.py --planted 131072
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from capped_clusters import BLOCK, ITERATIONS, PROBES, SEEDS, capped_plan, exact_keys_per_query
from captured_window import (
    add_window_arguments,
    plan_errors,
    planted_top_level,
    print_error_table,
    print_keys_summary,
)
from tile_probes import probe_estimate

from hf_hyper.attention.finders.query_clusters import (
    ProbePlan,
    plan_of_choice,
    within_key_budget,
)

# the clusters are those of capped_clusters.py: 4 probes' worth (block 512), 2 Lloyd
# iterations, 4 sinks, 2 seeds
# (f, candidates): each query keeps its best clusters among `candidates` while its exact
# keys stay within f x PROBES x the mean cluster size (None: no budget, the best PROBES)
BUDGETS: list[tuple[float | None, int]] = [(None, PROBES), (1.5, PROBES), (1.0, 8), (1.5, 8)]


def name_of(factor: float | None, candidates: int) -> str:
    if factor is None:
        return f"no budget, {candidates} probes"
    return f"budget {factor:g}x, best of {candidates}"


def budget_plan(
    q: torch.Tensor, k: torch.Tensor, scale: float, factor: float | None, candidates: int
) -> ProbePlan:
    """The plan for q [1, g, rows, d], k [1, nk, d]: the clusters and choice of the best
    `candidates` as `capped_clusters.py` makes them uncut, then (factor given) the
    library's budget (`within_key_budget`) of factor x PROBES x the mean cluster size."""
    plan = capped_plan(q, k, scale, None, candidates)
    if factor is None:
        return plan
    chosen = plan.chosen.reshape(1, -1, candidates)
    chosen, counts = within_key_budget(chosen, plan.counts, factor * PROBES)
    return plan_of_choice(plan.assign, counts, chosen.view(plan.chosen.shape))


KEYS_SEEN: list[dict[str, tuple[float, float]]] = []


def budget_errors(q, k, v, scale: float) -> dict[str, float]:
    """Each budget's error over the KV heads' rectangles (mean of the seeds); the keys
    per query go to KEYS_SEEN."""
    plans = {
        name_of(factor, candidates): partial(
            budget_plan, scale=scale, factor=factor, candidates=candidates
        )
        for factor, candidates in BUDGETS
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
    print("| clusters a query attends | exact keys per query: mean | 99th percentile | max "
          "| vs no budget |")  # fmt: skip
    print("|---|---|---|---|---|")
    base = None
    for factor, candidates in BUDGETS:
        keys = exact_keys_per_query(budget_plan(qz, kz, scale, factor, candidates)).double()
        base = base or keys.mean().item()
        mean, p99, top = keys.mean().item(), keys.quantile(0.99).item(), keys.max().item()
        name = name_of(factor, candidates)
        print(f"| {name} | {mean:.0f} | {p99:.0f} | {top:.0f} | {mean / base:.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192, required=False)
    p.add_argument("--planted", type=int, default=0, help="only the planted inputs' keys")
    args = p.parse_args()
    if not args.planted and not (args.model and args.text):
        p.error("give --model and --text (a real model's layers), or --planted N")
    if args.planted:
        planted_keys(args.planted)
        return
    columns = [name_of(factor, candidates) for factor, candidates in BUDGETS]
    caption = f"||O - O*||_F / ||V||_F, block {BLOCK}, {ITERATIONS} iterations"
    print_error_table(args, columns, budget_errors, SEEDS, caption)
    print_keys_summary(KEYS_SEEN)


if __name__ == "__main__":
    main()
