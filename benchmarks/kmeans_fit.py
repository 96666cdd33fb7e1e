"""How many keys Lloyd's iterations need: k-means blocks with the centroids fitted on
every s-th key, on a real model's attention inputs.

`kmeans_clusters` fits the centroids on about FIT_KEYS_PER_CLUSTER keys per cluster and
then assigns every key. On the lower-left rectangle of the first causal cut (as
`bucket_finders.py`), non-causal HyperAttention with k-means blocks (`kmeans_iters=4`,
2**7 clusters) and each fit size reports ||O - O*||_F / ||V||_F, the mean over three
seeds ("all": every key).

    python benchmarks/kmeans_fit.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse

import torch
from captured_window import add_window_arguments, model_and_window

from hf_hyper import HyperAttentionConfig, capture_attention, hyper_attention
from hf_hyper.attention import clustering

FIT_SIZES = {"all": 10**9, "32": 32, "16": 16, "8": 8, "4": 4}
SEEDS = 3


def rectangle_errors(q, k, v, scale: float) -> dict[str, float]:
    """Error of each fit size on the first cut's rectangle, in float64."""
    half = q.shape[2] // 2
    q, k, v = q[:, :, half:].double(), k[:, :, :half].double(), v[:, :, :half].double()
    g = q.shape[1] // k.shape[1]
    k_full, v_full = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    exact = torch.softmax(q @ k_full.transpose(-1, -2) * scale, -1) @ v_full
    errors = {}
    for name, per_cluster in FIT_SIZES.items():
        clustering.FIT_KEYS_PER_CLUSTER = per_cluster
        total = 0.0
        for seed in range(SEEDS):
            config = HyperAttentionConfig(seed=seed, backend="torch", min_seq_len=8, kmeans_iters=4)
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
    print("\nkeys per cluster in the fit:\n")
    print("| layer | " + " | ".join(FIT_SIZES) + " |")
    print("|---" * (1 + len(FIT_SIZES)) + "|")

    def report(layer, q, k, v, *, causal, scale):
        errors = rectangle_errors(q, k, v, scale)
        print(f"| {layer} | " + " | ".join(f"{e:.4f}" for e in errors.values()) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)


if __name__ == "__main__":
    main()
