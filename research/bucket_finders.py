"""LSH buckets against k-means buckets on a real model's attention inputs.

Captures one window's attention inputs (`capture_attention`) and, on the lower-left
rectangle of the first causal cut (the second half's queries against the first half's
keys, the block the estimator serves at the top level), runs non-causal HyperAttention
with each bucketing and reports ||O - O*||_F / ||V||_F, the mean over three seeds:

- `lsh`: the paper's angular LSH (`kmeans_iters=0`), 2**7 buckets;
- `kmeans I, 2**r`: each problem's keys in 2**r k-means clusters after I iterations.

    python research/bucket_finders.py --model DIR --gguf-file F.gguf --text kjv.txt \
        --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse

from captured_window import (
    add_window_arguments,
    first_cut_errors,
    print_error_table,
    rectangle_config,
)

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
    settings = {
        name: (lambda seed, extra=extra: rectangle_config(seed, **extra))
        for name, extra in VARIANTS.items()
    }
    return first_cut_errors(q, k, v, scale, settings, SEEDS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    args = p.parse_args()
    print_error_table(args, list(VARIANTS), rectangle_errors, SEEDS)


if __name__ == "__main__":
    main()
