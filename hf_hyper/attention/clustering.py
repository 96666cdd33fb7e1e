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

from .fused import kmeans as fused_kmeans
from .fused.kmeans import kernels_can_cluster
from .lsh import angular_lsh_rank, rank_dtype

# Score and float32 temporaries ([problems, rows, clusters], [problems, rows, d]) are made
# in row chunks of at most this many elements, so clustering adds little to the peak.
CHUNK_ELEMENTS = 2**25
# Keys per cluster that Lloyd's iterations fit the centroids on (`kmeans_clusters`).
FIT_KEYS_PER_CLUSTER = 32


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
        z, _, dim = k.shape
        centroids, assign, counts = kmeans_clusters(k, 2**num_projs, iterations, skip_keys)
        clusters = centroids.shape[1]
        # relabel clusters in the Gray order of their centroids' LSH buckets
        order = angular_lsh_rank(centroids, planes.float()).long().argsort(dim=-1, stable=True)
        label = torch.empty_like(order).scatter_(
            1, order, torch.arange(clusters, device=k.device).expand(z, clusters)
        )
        # a cluster's softmax mass for a query is about |cluster| exp(scale q.c)
        grouped = q.reshape(z, -1, dim)
        q_cluster = _best(grouped, centroids, scale, counts.log()).view(q.shape[:3])
        dtype = rank_dtype(num_projs)
        q_rank = torch.gather(label[:, None].expand(-1, q.shape[1], -1), 2, q_cluster)
        return q_rank.to(dtype), torch.gather(label, 1, assign).to(dtype)


def kmeans_clusters(
    k: Tensor, clusters: int, iterations: int, skip_keys: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's k-means of each problem's keys k [z, nk, d] into min(clusters, nk)
    clusters, from evenly spaced keys -> (centroids [z, c, d] float32, each key's cluster
    [z, nk] int64, member counts [z, c] float32). skip_keys [z] (or None): leading keys
    of each problem left out of the centroids and counts (they still get a cluster).

    The iterations fit the centroids on every s-th key, s chosen so that about
    FIT_KEYS_PER_CLUSTER keys per cluster remain (all keys where there are fewer); the
    final assignment and the counts take every key."""
    z, n_key, dim = k.shape
    clusters = min(clusters, n_key)
    skip = torch.zeros(z, 1, dtype=torch.int64, device=k.device)
    if skip_keys is not None:
        skip = skip_keys.to(device=k.device, dtype=torch.int64)[:, None]
    weight = (torch.arange(n_key, device=k.device) >= skip).float()
    # evenly spaced keys after the skipped ones as the first centroids: no random
    # draw, so the random stream (hyperplanes, samples) is the same as with LSH buckets
    start = skip + torch.arange(clusters, device=k.device) * (n_key - skip) // clusters
    return _lloyd(k, start, weight, iterations, max(1, n_key // (FIT_KEYS_PER_CLUSTER * clusters)))


def _lloyd(
    k: Tensor, start: Tensor, weight: Tensor, iterations: int, fit_stride: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's k-means of k [z, n, d] from the keys at positions start [z, c], each key
    weighing weight [z, n] (0: left out of the centroids and counts, still assigned),
    the iterations over every fit_stride-th key -> (centroids [z, c, d] float32,
    assignments [z, n] int64, counts [z, c] float32)."""
    dim = k.shape[-1]
    centroids = torch.gather(k, 1, start[..., None].expand(-1, -1, dim)).float()
    fit, fit_weight = k[:, ::fit_stride], weight[..., ::fit_stride]
    for _ in range(iterations):
        if kernels_can_cluster(fit):
            centroids = fused_kmeans.lloyd_step(fit, centroids, fit_weight)
            continue
        sums, counts = _cluster_sums(fit, centroids, fit_weight)
        # an emptied cluster keeps its centroid
        centroids = torch.where(
            counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids
        )
    assign = _nearest(k, centroids)
    # atomic float adds, but of 0/1 weights: exact, so the same on every run
    counts = torch.zeros(weight.shape[0], centroids.shape[1], device=k.device)
    return centroids, assign, counts.scatter_add_(1, assign, weight)


def _rows_per_chunk(x: Tensor, clusters: int) -> int:
    return max(1, CHUNK_ELEMENTS // (x.shape[0] * max(clusters, x.shape[-1])))


def _best(x: Tensor, centroids: Tensor, factor: float, bias: Tensor) -> Tensor:
    """argmax over clusters of factor * x.c + bias: x [z, n, d], centroids [z, c, d] (float32),
    bias [z, c] -> [z, n] int64 (in the k-means kernels where they serve x)."""
    if kernels_can_cluster(x):
        return fused_kmeans.best_centroid(x, centroids, factor, bias)
    z, n, _ = x.shape
    best = torch.empty(z, n, dtype=torch.int64, device=x.device)
    rows = _rows_per_chunk(x, centroids.shape[1])
    transposed = centroids.transpose(-1, -2)
    for first in range(0, n, rows):
        part = x[:, first : first + rows].float()
        best[:, first : first + rows] = (factor * (part @ transposed) + bias[:, None]).argmax(-1)
    return best


def _nearest(keys: Tensor, centroids: Tensor) -> Tensor:
    """Index of each key's nearest centroid: keys [z, n, d], centroids [z, c, d] -> [z, n]."""
    if kernels_can_cluster(keys):
        return fused_kmeans.best_centroid(keys, centroids)
    # |k - c|^2 = |k|^2 - 2 k.c + |c|^2, and |k|^2 is the same for every centroid
    return _best(keys, centroids, 2.0, -centroids.pow(2).sum(-1))


def _cluster_sums(keys: Tensor, centroids: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted sum and count of the keys nearest each centroid: ([z, c, d], [z, c])."""
    z, n, _ = keys.shape
    sums = torch.zeros_like(centroids)
    counts = torch.zeros(z, centroids.shape[1], device=keys.device)
    rows = _rows_per_chunk(keys, centroids.shape[1])
    for first in range(0, n, rows):
        part, w = keys[:, first : first + rows].float(), weight[:, first : first + rows]
        # a weighted one-hot product, not scatter_add_: CUDA's atomic adds would make the
        # sums, and so the clusters, vary from run to run
        member = torch.nn.functional.one_hot(_nearest(part, centroids), centroids.shape[1])
        member = member.float() * w[..., None]
        sums += member.transpose(-1, -2) @ part
        counts += member.sum(1)
    return sums, counts


@dataclass(frozen=True)
class KeyClustering:
    """What a call's problems need to cluster their keys: the call's hyperplanes (which
    order the clusters), the leading columns that are hashed, and the config's sizes."""

    planes: Tensor
    hash_dims: int
    num_projs: int
    iterations: int
    scale: float

    @classmethod
    def of_call(cls, planes: Tensor, hash_dims: int, config, scale: float) -> KeyClustering:
        """The clustering a call with this config makes (config.kmeans_iters > 0)."""
        return cls(planes, hash_dims, config.lsh_num_projs, config.kmeans_iters, scale)

    def ranks(self, q: Tensor, k: Tensor, skip_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`kmeans_ranks` of one batch of problems, q [z, g, nq, d], k [z, nk, d]."""
        hd = self.hash_dims
        return kmeans_ranks(
            q[..., :hd], k[..., :hd], self.num_projs, self.iterations, self.scale,
            self.planes, skip_keys,
        )  # fmt: skip
