"""The one place a call's finder is chosen from its config."""

from __future__ import annotations

from torch import Tensor

from ...config import HyperAttentionConfig
from .kmeans import KmeansBlocks
from .lsh import LshBlocks
from .query_clusters import QueryClusters

Finder = LshBlocks | KmeansBlocks | QueryClusters


def finder_of_call(
    config: HyperAttentionConfig, planes: Tensor, hash_dims: int, scale: float
) -> Finder:
    """The finder `config.finder` names, for a call whose hyperplanes are `planes`, that
    looks at the leading hash_dims columns of q and k; its kernels serve the rows they
    take unless `config.allows_kernels` is False."""
    kernels = config.allows_kernels
    if config.finder == "clusters":
        return QueryClusters(
            hash_dims, config.cluster_probes, config.kmeans_iters, config.lsh_num_projs,
            config.block_size, config.sample_size, scale, kernels,
            require_kernels=config.backend == "triton", key_budget=config.cluster_key_budget,
        )  # fmt: skip
    if config.finder == "kmeans":
        return KmeansBlocks(
            planes, hash_dims, config.lsh_num_projs, config.kmeans_iters, scale, kernels
        )
    return LshBlocks(planes, hash_dims, kernels)
