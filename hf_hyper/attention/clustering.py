"""Buckets from k-means on the keys: a large-entry finder that adapts to the keys.

Angular LSH buckets by the signs of random projections; on pretrained models its blocks
hold about chance mass. Here the keys of one problem are clustered (Lloyd's k-means,
Euclidean, a few iterations from evenly spaced keys), and each query takes the cluster
of largest estimated softmax mass, scale * q.c + log |cluster|. Cluster ids are ordered
by the angular LSH rank of their centroids, so neighbouring ids are near clusters and a
key block holds clusters close to each other, as sortLSH's Gray order does for buckets.

The ranks feed the same block planning as LSH ranks (`planning.plan_blocks`), so the
kernels do not change. The clustering depends on the problem's keys only: in the causal
recursion each lower-left block clusters its own keys, which precede all its queries,
so no output depends on a later token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .lsh import angular_lsh_rank, rank_dtype


def kmeans_ranks(
    q: Tensor,
    k: Tensor,
    num_projs: int,
    iterations: int,
    scale: float,
    planes: Tensor,
    skip_keys: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Bucket ranks of queries q [z, g, nq, d] and keys k [z, nk, d] from 2**num_projs
    k-means clusters of each problem's keys -> ([z, g, nq], [z, nk]) in rank_dtype.

    planes [d, r]: hyperplanes that order the clusters. skip_keys [z] (or None): leading
    keys of each problem that take no part in the clustering (the sinks, attended
    exactly elsewhere); they still get a rank, the nearest cluster's.
    """
    with torch.no_grad():
        z, n_key, _ = k.shape
        clusters = min(2**num_projs, n_key)
        keys = k.float()
        skip = torch.zeros(z, 1, dtype=torch.int64, device=k.device)
        if skip_keys is not None:
            skip = skip_keys.to(device=k.device, dtype=torch.int64)[:, None]
        weight = (torch.arange(n_key, device=k.device) >= skip).float()
        # evenly spaced keys after the skipped ones as the first centroids: no random
        # draw, so the random stream (hyperplanes, samples) is the same as with LSH buckets
        start = skip + torch.arange(clusters, device=k.device) * (n_key - skip) // clusters
        centroids = torch.gather(keys, 1, start[..., None].expand(-1, -1, keys.shape[-1]))
        for _ in range(iterations):
            assign = _nearest(keys, centroids)
            sums = torch.zeros_like(centroids).scatter_add_(
                1, assign[..., None].expand_as(keys), keys * weight[..., None]
            )
            counts = torch.zeros(z, clusters, device=k.device).scatter_add_(1, assign, weight)
            # an emptied cluster keeps its centroid
            centroids = torch.where(
                counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids
            )
        assign = _nearest(keys, centroids)
        counts = torch.zeros(z, clusters, device=k.device).scatter_add_(1, assign, weight)
        # relabel clusters in the Gray order of their centroids' LSH buckets
        order = angular_lsh_rank(centroids, planes.float()).long().argsort(dim=-1, stable=True)
        label = torch.empty_like(order).scatter_(
            1, order, torch.arange(clusters, device=k.device).expand(z, clusters)
        )
        # a cluster's softmax mass for a query is about |cluster| exp(scale q.c)
        log_mass = scale * (q.float() @ centroids[:, None].transpose(-1, -2))
        q_cluster = (log_mass + counts.log()[:, None, None]).argmax(dim=-1)
        dtype = rank_dtype(num_projs)
        q_rank = torch.gather(label[:, None].expand(-1, q.shape[1], -1), 2, q_cluster)
        return q_rank.to(dtype), torch.gather(label, 1, assign).to(dtype)


def _nearest(keys: Tensor, centroids: Tensor) -> Tensor:
    """Index of each key's nearest centroid: keys [z, n, d], centroids [z, c, d] -> [z, n]."""
    # |k - c|^2 = |k|^2 - 2 k.c + |c|^2; |k|^2 is the same for every centroid
    distance = centroids.pow(2).sum(-1)[:, None] - 2 * keys @ centroids.transpose(-1, -2)
    return distance.argmin(dim=-1)


@dataclass(frozen=True)
class KeyClustering:
    """What a call's problems need to cluster their keys: the call's hyperplanes (which
    order the clusters), the leading columns that are hashed, and the config's sizes."""

    planes: Tensor
    hash_dims: int
    num_projs: int
    iterations: int
    scale: float

    def ranks(self, q: Tensor, k: Tensor, skip_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`kmeans_ranks` of one batch of problems, q [z, g, nq, d], k [z, nk, d]."""
        hd = self.hash_dims
        return kmeans_ranks(
            q[..., :hd], k[..., :hd], self.num_projs, self.iterations, self.scale,
            self.planes, skip_keys,
        )  # fmt: skip
