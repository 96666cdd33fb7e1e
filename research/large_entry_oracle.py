"""How much of HyperAttention's error comes from the LSH not finding the large entries.

Captures one window's attention inputs of a real model (`capture_attention`) and, on the
lower-left rectangle of the first causal cut (the second half's queries against the
first half's keys, the block the estimator serves at the top level), compares with exact
attention, as ||O - O*||_F / ||V||_F:

- `hyper`: HyperAttention itself (non-causal on the rectangle, the given config);
- `sinks + sample`: the sinks exact, everything else from a uniform sample of
  `sample_size` keys (what HyperAttention is when its blocks find nothing);
- `sinks + top-k + sample`: each query's own k largest entries exact as well (an oracle
  no blocked method can match, the ceiling of any better large-entry finder).

    python research/large_entry_oracle.py --model DIR --gguf-file F.gguf --text kjv.txt \
        --length 16384 --top-k 256 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
from captured_window import add_window_arguments, cut_rectangles, model_and_window

from hf_hyper import HyperAttentionConfig, capture_attention, hyper_attention


def sampled_estimate(scores, v, exact, sample_size: int, gen) -> torch.Tensor:
    """Exact over `exact` [g, rows, keys], plus one uniform key sample for all rows, each
    sampled key weighted by (a row's non-exact keys) / (its non-exact sampled keys)."""
    n_key = scores.shape[-1]
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    numerator, denominator = (weights * exact) @ v, (weights * exact).sum(-1)
    sample = torch.randperm(n_key, generator=gen)[:sample_size]
    rest = (~exact[..., sample]).to(scores.dtype)
    scale = (~exact).sum(-1, keepdim=True) / rest.sum(-1, keepdim=True).clamp_min(1)
    sampled = weights[..., sample] * rest * scale
    return (numerator + sampled @ v[sample]) / (denominator + sampled.sum(-1))[..., None]


def rectangle_errors(q, k, v, scale, config: HyperAttentionConfig, top_ks, rows: int) -> dict:
    """Errors of the three estimators on the first cut's rectangle, per KV head pooled."""
    # the recursion serves its rectangles with blocks and sample at any size: so here too
    config = dataclasses.replace(config, min_seq_len=2 * max(config.sinks, 4))
    gen = torch.Generator().manual_seed(0)
    sq = {"hyper": 0.0, "sinks + sample": 0.0, **{f"sinks + top-{t} + sample": 0.0 for t in top_ks}}
    v_sq = 0.0
    for r in cut_rectangles(q, k, v, scale, rows):
        v_sq += r.v_sq
        approx = hyper_attention(r.q[None], r.k[None, None], r.v[None, None], causal=False,
                                 scale=scale, config=config)[0]  # fmt: skip
        sq["hyper"] += (approx - r.exact).pow(2).sum().item()
        sinks = torch.zeros(r.scores.shape, dtype=torch.bool)
        sinks[..., : config.sinks] = True
        est = sampled_estimate(r.scores, r.v, sinks, config.sample_size, gen)
        sq["sinks + sample"] += (est - r.exact).pow(2).sum().item()
        for t in top_ks:
            exact = sinks.scatter(-1, r.scores.topk(t, -1).indices, True)
            est = sampled_estimate(r.scores, r.v, exact, config.sample_size, gen)
            sq[f"sinks + top-{t} + sample"] += (est - r.exact).pow(2).sum().item()
    return {name: math.sqrt(value / v_sq) for name, value in sq.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=16384)
    p.add_argument("--rows", type=int, default=2048, help="queries measured after the cut")
    p.add_argument("--top-k", type=int, nargs="+", default=[256, 1024])
    args = p.parse_args()
    model, ids = model_and_window(args)
    config = HyperAttentionConfig(seed=0, backend="torch")
    print(f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, config {config.to_dict()}")
    print("\n| layer | " + " | ".join(["hyper", "sinks + sample",
          *[f"sinks + top-{t} + sample" for t in args.top_k]]) + " |")  # fmt: skip
    print("|---" * (3 + len(args.top_k)) + "|")

    def report(layer, q, k, v, *, causal, scale):
        errors = rectangle_errors(q, k, v, scale, config, args.top_k, args.rows)
        print(f"| {layer} | " + " | ".join(f"{e:.3f}" for e in errors.values()) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)


if __name__ == "__main__":
    main()
