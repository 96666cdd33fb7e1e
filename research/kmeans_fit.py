"""How many keys Lloyd's iterations need: k-means blocks with the centroids fitted on
every s-th key, on a real model's attention inputs.

`kmeans_clusters` fits the centroids on about FIT_KEYS_PER_CLUSTER keys per cluster and
then assigns every key. On the lower-left rectangle of the first causal cut (as
`bucket_finders.py`), non-causal HyperAttention with k-means blocks (`kmeans_iters=4`,
2**7 clusters) and each fit size reports ||O - O*||_F / ||V||_F, the mean over three
seeds ("all": every key).

    python research/kmeans_fit.py --model DIR --gguf-file F.gguf --text kjv.txt \\
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

from hf_hyper.attention.finders import kmeans as clustering

FIT_SIZES = {"all": 10**9, "32": 32, "16": 16, "8": 8, "4": 4}
SEEDS = 3


def rectangle_errors(q, k, v, scale: float) -> dict[str, float]:
    """Error of each fit size on the first cut's rectangle, in float64."""

    def fitted_on(per_cluster: int):
        def config_of(seed: int):
            clustering.FIT_KEYS_PER_CLUSTER = per_cluster  # read when the call clusters
            return rectangle_config(seed, kmeans_iters=4)

        return config_of

    settings = {name: fitted_on(size) for name, size in FIT_SIZES.items()}
    return first_cut_errors(q, k, v, scale, settings, SEEDS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    args = p.parse_args()
    print_error_table(
        args, list(FIT_SIZES), rectangle_errors, SEEDS, "keys per cluster in the fit:"
    )


if __name__ == "__main__":
    main()
