"""The plan search's rules, apart from any model: whether a measured result keeps the
budgets, how much of them it uses, the ranking of layers by their effect alone, the
bisection over best-ranked layers per mode, and the choice by modelled attention time.
`planner` measures; these decide."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

EXACT = "exact"


def plan_key(assignment: dict[int, str]) -> str:
    return ",".join(f"{layer}:{mode}" for layer, mode in sorted(assignment.items())) or EXACT


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def layers_by_mode(assignment: dict[int, str]) -> str:
    """{0: 'fast', 1: 'fast', 3: 'fast+tail'} -> 'fast 0-1; fast+tail 3' ('exact': none)."""
    if not assignment:
        return EXACT
    modes = dict.fromkeys(assignment.values())
    return "; ".join(
        f"{mode} {layer_ranges([i for i, m in assignment.items() if m == mode])}" for mode in modes
    )


def keeps_budgets(
    result: dict[str, Any], base: dict[str, Any], ppl_budget: float, retrieval_budget: float
) -> bool:
    """Perplexity within (1 + ppl_budget) x unpatched, and per task at least
    retrieval_budget x the unpatched hits."""
    if result["ppl"] > base["ppl"] * (1 + ppl_budget):
        return False
    return all(
        result["retrieval"][task]["hits"] >= retrieval_budget * r["hits"]
        for task, r in base["retrieval"].items()
    )


def budget_share(
    result: dict[str, Any], base: dict[str, Any], ppl_budget: float, retrieval_budget: float
) -> float:
    """How much of the budgets a result uses: the largest of its perplexity increase over
    the perplexity budget and, per task, its lost hits over the hits the retrieval budget
    lets it lose (1: at a budget; above 1: over it; below 0: better than unpatched)."""
    shares = [_share(result["ppl"] / base["ppl"] - 1, ppl_budget)]
    for task, r in base["retrieval"].items():
        lost = r["hits"] - result["retrieval"][task]["hits"]
        shares.append(_share(lost, (1 - retrieval_budget) * r["hits"]))
    return max(shares)


def _share(used: float, allowed: float) -> float:
    if allowed > 0:
        return used / allowed
    return math.inf if used > 0 else 0.0


def rank_alone(
    measure: Callable[[dict[int, str]], dict[str, Any]], base: dict[str, Any],
    layers: Sequence[int], mode: str, ppl_budget: float, retrieval_budget: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each layer patched alone in `mode`, measured, and ranked by the share of the budgets
    it uses (least first; ties: lower perplexity, then the earlier layer)."""
    rows = []
    for layer in layers:
        result = measure({layer: mode})
        share = budget_share(result, base, ppl_budget, retrieval_budget)
        hits = {task: r["hits"] for task, r in result["retrieval"].items()}
        rows.append(
            {"layer": layer, "mode": mode, "budget_share": share, "ppl": result["ppl"]}
            | {"retrieval": hits}
        )
    rows.sort(key=lambda r: (r["budget_share"], r["ppl"], r["layer"]))
    return [r | {"rank": i + 1} for i, r in enumerate(rows)]


def most_layers(fits: Callable[[int], bool], count: int) -> int:
    """The largest k in [0, count] with fits(k), by bisection (fits assumed to hold up to
    some k and fail beyond it; fits(0) is taken to hold)."""
    low, high = 0, count
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def search(
    fits: Callable[[dict[int, str]], bool], ranked: Sequence[int], modes_by_cost: Sequence[str]
) -> list[dict[int, str]]:
    """Candidate assignments: each mode alone on the most best-ranked layers that fit, and
    the modes nested cheapest first (each extends the layers the cheaper ones left)."""
    candidates = []
    for mode in modes_by_cost:
        k = most_layers(lambda k, mode=mode: fits(dict.fromkeys(ranked[:k], mode)), len(ranked))
        candidates.append(dict.fromkeys(ranked[:k], mode))
    if len(modes_by_cost) > 1:
        nested: dict[int, str] = {}
        for mode in modes_by_cost:
            rest = list(ranked[len(nested) :])
            k = most_layers(
                lambda k, mode=mode, rest=rest, kept=dict(nested): fits(
                    kept | dict.fromkeys(rest[:k], mode)
                ),
                len(rest),
            )
            nested |= dict.fromkeys(rest[:k], mode)
        candidates.append(nested)
    return candidates


def modelled_ms(
    assignment: dict[int, str], layers: Sequence[int], times: dict[str, float]
) -> float:
    """Attention time of `layers` (those a plan can patch) in one forward pass at the target
    length: each layer's call in its mode, exact where the assignment leaves it."""
    return sum(times[assignment.get(layer, EXACT)] for layer in layers)


def choose(
    candidates: list[dict[int, str]], layers: Sequence[int], times: dict[str, float]
) -> dict[int, str] | None:
    """The non-empty candidate of least modelled time (more layers on a tie)."""
    useful = [c for c in candidates if c]
    if not useful:
        return None
    return min(useful, key=lambda c: (modelled_ms(c, layers, times), -len(c)))
