"""LSH buckets against k-means buckets on a real model's attention inputs.

Captures one window's attention inputs (`capture_attention`) and, on the lower-left
rectangle of the first causal cut (the second half's queries against the first half's
keys, the block the estimator serves at the top level), runs non-causal HyperAttention
with each bucketing and reports ||O - O*||_F / ||V||_F, the mean over three seeds:

- `lsh`: the paper's angular LSH (`kmeans_iters=0`), 2**7 buckets;
- `kmeans I, 2**r`: each problem's keys in 2**r k-means clusters after I iterations.

    python benchmarks/bucket_finders.py --model DIR --gguf-file F.gguf --text kjv.txt \
        --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse

import torch
from captured_window import add_window_arguments, model_and_window

from hf_hyper import HyperAttentionConfig, capture_attention, hyper_attention

VARIANTS = {
    "lsh": {},
    "kmeans 4, 2**7": dict(kmeans_iters=4),
    "kmeans 8, 2**7": dict(kmeans_iters=8),
    "kmeans 4, 2**6": dict(kmeans_iters=4, lsh_num_projs=6),
    "kmeans 4, 2**8": dict(kmeans_iters=4, lsh_num_projs=8),
}
SEEDS = 3


def rectangle_errors(q, k, v, scale: float) -> dict[str, float]:
    """Error of each variant on the first cut's rectangle, in float64."""
    half = q.shape[2] // 2
    q, k, v = q[:, :, half:].double(), k[:, :, :half].double(), v[:, :, :half].double()
    g = q.shape[1] // k.shape[1]
    k_full, v_full = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    exact = torch.softmax(q @ k_full.transpose(-1, -2) * scale, -1) @ v_full
    errors = {}
    for name, extra in VARIANTS.items():
        total = 0.0
        for seed in range(SEEDS):
            # the recursion serves its rectangles with blocks and sample at any size
            config = HyperAttentionConfig(seed=seed, backend="torch", min_seq_len=8, **extra)
            out = hyper_attention(q, k, v, causal=False, scale=scale, config=config)
            total += ((out - exact).norm() / v_full.norm()).item()
        errors[name] = total / SEEDS
    return errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    args = p.parse_args()
    model, ids = model_and_window(args)
    print(f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, {SEEDS} seeds")
    print("\n| layer | " + " | ".join(VARIANTS) + " |")
    print("|---" * (1 + len(VARIANTS)) + "|")

    def report(layer, q, k, v, *, causal, scale):
        errors = rectangle_errors(q, k, v, scale)
        print(f"| {layer} | " + " | ".join(f"{e:.4f}" for e in errors.values()) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)


if __name__ == "__main__":
    main()
