"""Buckets from k-means on the keys: a large-entry finder that adapts to the keys.

Angular LSH buckets by the signs of random projections; on pretrained models its blocks
hold about chance mass. Here the keys of one problem are clustered (Lloyd's k-means,
Euclidean, a few iterations from evenly spaced keys), and each query takes the cluster
of largest estimated softmax mass, scale * q.c + log |cluster|. Cluster ids are ordered
by the angular LSH rank of their centroids, so neighbouring ids are near clusters and a
key block holds clusters close to each other, as sortLSH's Gray order does for buckets.

The ranks feed the same block planning as LSH ranks (`planning.plan_blocks`), so the
executors do not change. The k-means kernels' launchers are here too; the kernels
themselves are in `kernels.kmeans`. The clustering depends on the problem's keys only: in the causal
recursion each lower-left block clusters its own keys, which precede all its queries,
so no output depends on a later token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..fused.bucket_sort import (
    bucket_histogram,
    bucket_totals,
    stable_bucket_argsort,
)
from ..fused.support import FUSED_DTYPES, MAX_HEAD_DIM, triton_available
from ..fused.tuning import padded_width
from ..planning import block_id_dtype
from .lsh import angular_lsh_rank, rank_dtype

# Score and float32 temporaries ([problems, rows, clusters], [problems, rows, d]) are made
# in row chunks of at most this many elements, so clustering adds little to the peak.
CHUNK_ELEMENTS = 2**25
# Elements of the first centroids gathered at once (`fit_centroids`).
INIT_CHUNK_ELEMENTS = 2**21
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
    *,
    kernels: bool = True,
) -> tuple[Tensor, Tensor]:
    """Bucket ranks of queries q [zp, g, nq, d] (or a [z, p, g, nq, d] view, problem
    zp = z * p + p_i, as a causal level's queries are) and keys k [zp, nk, d] from
    2**num_projs k-means clusters of each problem's keys -> ([zp, g, nq], [zp, nk]) in
    rank_dtype.

    planes [d, r]: hyperplanes that order the clusters. skip_keys [zp] (or None): leading
    keys of each problem that take no part in the clustering (the sinks, attended
    exactly elsewhere); they still get a rank, the nearest cluster's. kernels=False
    keeps every step in torch ops (backend "torch"); True lets the k-means kernels serve
    the rows they take.
    """
    with torch.no_grad():
        zp = k.shape[0]
        centroids = fit_centroids(k, 2**num_projs, iterations, skip_keys, kernels=kernels)
        # renumber the clusters in the Gray order of their centroids' LSH buckets, so a
        # cluster's index is its rank and the choices below are written as ranks
        order = angular_lsh_rank(centroids, planes.float()).long().argsort(dim=-1, stable=True)
        dtype = rank_dtype(num_projs)
        k_rank, counts = _nearest_with_counts(k, centroids, skip_keys, dtype, order, kernels)
        # a cluster's softmax mass for a query is about |cluster| exp(scale q.c)
        q_rank = _best(q, centroids, scale, counts.log(), dtype, order, kernels)
        return q_rank.view(zp, q.shape[-3], q.shape[-2]), k_rank


def kmeans_clusters(
    k: Tensor, clusters: int, iterations: int, skip_keys: Tensor | None = None,
    *, kernels: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Lloyd's k-means of each problem's keys k [z, nk, d] into min(clusters, nk)
    clusters, from evenly spaced keys -> (centroids [z, c, d] float32, each key's cluster
    [z, nk] int64, member counts [z, c] float32). skip_keys [z] (or None): leading keys
    of each problem left out of the centroids and counts (they still get a cluster).

    The iterations fit the centroids on every s-th key, s chosen so that about
    FIT_KEYS_PER_CLUSTER keys per cluster remain (all keys where there are fewer); the
    final assignment and the counts take every key. kernels: as in `kmeans_ranks`."""
    centroids = fit_centroids(k, clusters, iterations, skip_keys, kernels=kernels)
    return centroids, *_nearest_with_counts(k, centroids, skip_keys, kernels=kernels)


def fit_centroids(
    k: Tensor, clusters: int, iterations: int, skip_keys: Tensor | None = None,
    *, kernels: bool = True,
) -> Tensor:  # fmt: skip
    """The centroids of `kmeans_clusters`: [z, c, d] float32."""
    z, n_key, dim = k.shape
    clusters = min(clusters, n_key)
    skip = torch.zeros(z, dtype=torch.int64, device=k.device)
    if skip_keys is not None:
        skip = skip_keys.to(device=k.device, dtype=torch.int64)
    # evenly spaced keys after the skipped ones as the first centroids: no random
    # draw, so the random stream (hyperplanes, samples) is the same as with LSH buckets
    spacing = torch.arange(clusters, device=k.device) * (n_key - skip[:, None])
    start = skip[:, None] + spacing // clusters
    centroids = torch.empty(z, clusters, dim, dtype=torch.float32, device=k.device)
    # gathered a few problems at a time: deep causal levels hold hundreds of problems,
    # and a whole gather in k's dtype beside its float32 copy would set a call's peak
    step = max(1, INIT_CHUNK_ELEMENTS // (clusters * dim))
    for first in range(0, z, step):
        index = start[first : first + step, :, None].expand(-1, -1, dim)
        centroids[first : first + step] = torch.gather(k[first : first + step], 1, index)
    stride = max(1, n_key // (FIT_KEYS_PER_CLUSTER * clusters))
    fit = k[:, ::stride]
    first_fit_row = (skip + stride - 1) // stride  # fit row i is key i * stride
    for _ in range(iterations):
        if kernels and kernels_can_cluster(fit):
            lloyd_step_(fit, centroids, first_fit_row)
            continue
        weight = (torch.arange(fit.shape[1], device=k.device) >= first_fit_row[:, None]).float()
        sums, counts = _cluster_sums(fit, centroids, weight, kernels)
        # an emptied cluster keeps its centroid
        centroids = torch.where(
            counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids
        )
    return centroids


def _nearest_with_counts(
    k: Tensor,
    centroids: Tensor,
    skip_keys: Tensor | None,
    dtype: torch.dtype = torch.int64,
    order: Tensor | None = None,
    kernels: bool = True,
) -> tuple[Tensor, Tensor]:
    """Each key's nearest centroid (`_nearest`) and each cluster's member count [z, c]
    float32, the leading skip_keys [z] keys (or none) left out of the counts."""
    if not (kernels and kernels_can_cluster(k)):
        assign = _nearest(k, centroids, dtype, order, kernels)
        return assign, _member_counts(assign, skip_keys, centroids.shape[1])
    z = k.shape[0]
    counts = torch.zeros(z, centroids.shape[1], dtype=torch.int32, device=k.device)
    first_row = torch.zeros(z, dtype=torch.int64, device=k.device)
    if skip_keys is not None:
        first_row = skip_keys.to(device=k.device, dtype=torch.int64)
    assign = best_centroid(
        k, centroids, dtype=dtype, order=order, counts=counts, first_row=first_row
    )
    return assign, counts.float()


def _member_counts(assign: Tensor, skip_keys: Tensor | None, clusters: int) -> Tensor:
    """Member count of each cluster [z, c] float32 from each key's cluster assign [z, n]
    (any integer type), the leading skip_keys [z] keys (or none) left out."""
    # integer counts, the same on every run; the left-out keys are counted in an extra
    # cluster and dropped, which needs no host sync for their number
    if skip_keys is not None:
        skip = skip_keys.to(device=assign.device)[:, None]
        kept = torch.arange(assign.shape[1], device=assign.device) >= skip
        assign = assign.masked_fill(~kept, clusters)
    counts = bucket_totals(bucket_histogram(assign, clusters + 1), clusters + 1)
    return counts[:, :clusters].float()


def _rows_per_chunk(x: Tensor, clusters: int) -> int:
    return max(1, CHUNK_ELEMENTS // (x.shape[0] * max(clusters, x.shape[-1])))


def score_chunks(
    x: Tensor, centroids: Tensor, factor: float, bias: Tensor
) -> Iterator[tuple[int, Tensor]]:
    """factor * x.c + bias of the rows of x [z, n, d] against centroids [z, c, d], bias
    [z, c], in float32 and in row chunks of at most CHUNK_ELEMENTS scores (or x's width)
    -> (first row, scores [z, rows, c]) per chunk: the torch ops' path to the best
    cluster(s), which keeps the [z, n, c] scores out of memory."""
    rows = _rows_per_chunk(x, centroids.shape[1])
    transposed = centroids.transpose(-1, -2)
    for first in range(0, x.shape[1], rows):
        part = x[:, first : first + rows].float()
        yield first, factor * (part @ transposed) + bias[:, None]


def _best(
    x: Tensor,
    centroids: Tensor,
    factor: float,
    bias: Tensor,
    dtype: torch.dtype = torch.int64,
    order: Tensor | None = None,
    kernels: bool = True,
) -> Tensor:
    """argmax over clusters of factor * x.c + bias: x rows [zp, n, d], [zp, g, n, d] or
    [z, p, g, n, d] (`problem_rows`), centroids [zp, c, d] (float32), bias
    [zp, c] -> x.shape[:-1] of the integer dtype (in the k-means kernels where they
    serve x, unless kernels is False). order [zp, c] (or None): index j stands for
    centroid order[:, j]."""
    if kernels and kernels_can_cluster(x):
        return best_centroid(x, centroids, factor, bias, dtype, order)
    if order is not None:
        centroids = torch.gather(centroids, 1, order[..., None].expand(-1, -1, x.shape[-1]))
    flat = x.reshape(centroids.shape[0], -1, x.shape[-1])
    best = torch.empty(flat.shape[:2], dtype=dtype, device=x.device)
    for first, scores in score_chunks(flat, centroids, factor, bias):
        best[:, first : first + scores.shape[1]] = scores.argmax(-1)
    return best.view(x.shape[:-1])


def _nearest(
    keys: Tensor, centroids: Tensor, dtype: torch.dtype = torch.int64,
    order: Tensor | None = None, kernels: bool = True,
) -> Tensor:  # fmt: skip
    """Index of each key's nearest centroid: keys [z, n, d], centroids [z, c, d] -> [z, n]
    of the integer dtype (index j: centroid order[:, j] where order is given)."""
    if kernels and kernels_can_cluster(keys):
        return best_centroid(keys, centroids, dtype=dtype, order=order)
    if order is not None:
        centroids = torch.gather(centroids, 1, order[..., None].expand(-1, -1, keys.shape[-1]))
    # |k - c|^2 = |k|^2 - 2 k.c + |c|^2, and |k|^2 is the same for every centroid
    return _best(keys, centroids, 2.0, -centroids.pow(2).sum(-1), dtype, kernels=kernels)


def _cluster_sums(
    keys: Tensor, centroids: Tensor, weight: Tensor, kernels: bool = True
) -> tuple[Tensor, Tensor]:
    """Weighted sum and count of the keys nearest each centroid: ([z, c, d], [z, c])."""
    z, n, _ = keys.shape
    sums = torch.zeros_like(centroids)
    counts = torch.zeros(z, centroids.shape[1], device=keys.device)
    rows = _rows_per_chunk(keys, centroids.shape[1])
    for first in range(0, n, rows):
        part, w = keys[:, first : first + rows].float(), weight[:, first : first + rows]
        # a weighted one-hot product, not scatter_add_: CUDA's atomic adds would make the
        # sums, and so the clusters, vary from run to run
        nearest = _nearest(part, centroids, kernels=kernels)
        member = torch.nn.functional.one_hot(nearest, centroids.shape[1])
        member = member.float() * w[..., None]
        sums += member.transpose(-1, -2) @ part
        counts += member.sum(1)
    return sums, counts


# The k-means kernels' launchers (`kernels.kmeans`): no autograd, the clustering is a
# plan, not part of the output's graph.
# (BLOCK_M rows, BLOCK_C centroids, num_warps) of the best-centroid kernel: every
# program reads all centroids, so tall row tiles keep that traffic small
BEST_TILE = (128, 64, 8)
BEST_TILE_IEEE = (64, 32, 4)
UPDATE_BLOCK_N = 64  # rows per step of the Lloyd-update kernel


def kernels_can_cluster(x: Tensor) -> bool:
    """Whether the k-means kernels serve these rows (CUDA, a dtype and width they take)."""
    return (
        x.is_cuda and triton_available() and x.dtype in FUSED_DTYPES
        and x.shape[-1] <= MAX_HEAD_DIM
    )  # fmt: skip


def problem_rows(x: Tensor) -> Tensor:
    """Rows x [zp, n, d], [zp, g, n, d] or [z, p, g, n, d] as a [z, p, g, n, d] view
    with unit stride along d (copied only if it has none): problem zp = z * p + p_i has
    the centroids, its g groups of n rows each take them."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    if x.dim() == 3:
        return x[:, None, None]
    return x[:, None] if x.dim() == 4 else x


def best_centroid(
    x: Tensor,
    centroids: Tensor,
    factor: float = 2.0,
    bias: Tensor | None = None,
    dtype: torch.dtype = torch.int64,
    order: Tensor | None = None,
    counts: Tensor | None = None,
    first_row: Tensor | None = None,
) -> Tensor:
    """argmax over clusters of factor * x.c + bias: x rows as `problem_rows` takes them,
    centroids [zp, c, d] (float32), bias [zp, c] -> x.shape[:-1] of the integer dtype
    (one that holds c); bias None: each row's nearest centroid (as factor 2, bias
    -|c|^2). 16-bit x meets the centroids rounded to its dtype (tensor-core dots, and
    the norms of the rounded centroids); float32 x exact dots. order [zp, c] (or None):
    index j stands for centroid order[:, j], as if centroids were gathered by it.
    counts [zp, c] int32 (or None): each row at or after first_row[zp] adds 1 to its
    problem's count of the index chosen for it (the same on every run)."""
    from ..kernels.kmeans import best_centroid_kernel

    rows = problem_rows(x)
    z, pairs, groups, n_rows, dim = rows.shape
    n_centroids = centroids.shape[1]
    if centroids.shape[0] != z * pairs:
        raise ValueError(f"centroids for {centroids.shape[0]} problems, rows for {z * pairs}")
    out = torch.empty(rows.shape[:-1], dtype=dtype, device=x.device)
    ieee = x.dtype == torch.float32
    block_m, block_c, warps = BEST_TILE_IEEE if ieee else BEST_TILE
    nearest = bias is None
    centroids = centroids.float().contiguous()
    bias = centroids if nearest else bias.float().contiguous()  # not read when nearest
    ordered = order is not None
    order = order.contiguous() if ordered else out  # not read unless ordered
    count = counts is not None
    if count and (counts.dtype != torch.int32 or not counts.is_contiguous()):
        raise ValueError("counts must be a contiguous int32 tensor")
    counts, first_row = (counts, first_row.contiguous()) if count else (out, out)
    s_z, s_p, s_g, s_row = rows.stride()[:4]
    best_centroid_kernel[(z * pairs * groups, -(-n_rows // block_m))](
        rows, centroids, bias, order, out, counts, first_row, n_rows, n_centroids, pairs,
        groups, s_z, s_p, s_g, s_row, factor, D=dim, D_PAD=padded_width(dim),
        BLOCK_M=block_m, BLOCK_C=block_c, IEEE=ieee, NEAREST=nearest, ORDERED=ordered,
        COUNT=count, num_warps=warps,
    )  # fmt: skip
    return out.view(x.shape[:-1])


def lloyd_step_(x: Tensor, centroids: Tensor, first_row: Tensor) -> Tensor:
    """One of Lloyd's iterations, in place: each row of x [z, n, d] to its nearest
    centroid, then each centroid of centroids [z, c, d] (float32, contiguous) to the
    mean of its rows; rows before first_row[z] (integers) take no part, and a cluster
    with no rows keeps its centroid. The same on every run. Returns centroids."""
    from ..kernels.kmeans import lloyd_update_kernel

    x = problem_rows(x)[:, 0, 0]
    z, n_rows, dim = x.shape
    n_clusters = centroids.shape[1]
    assign = best_centroid(x, centroids, dtype=block_id_dtype(n_clusters))
    order, starts = stable_bucket_argsort(assign, n_clusters)
    lloyd_update_kernel[(n_clusters, z)](
        x, order, starts, first_row.contiguous(), centroids, n_rows, n_clusters, x.stride(0),
        x.stride(1), D=dim, D_PAD=padded_width(dim), BLOCK_N=UPDATE_BLOCK_N, num_warps=4,
    )  # fmt: skip
    return centroids


@dataclass(frozen=True)
class KmeansBlocks:
    """The k-means finder of one call: the hyperplanes that order the clusters, the
    leading columns that are clustered, and the config's sizes. kernels=False keeps
    every step in torch ops (backend "torch")."""

    planes: Tensor
    hash_dims: int
    num_projs: int
    iterations: int
    scale: float
    kernels: bool = True

    def call_ranks(self, q: Tensor, k: Tensor) -> None:
        """None: each problem clusters its own keys (`ranks`), so that in the causal
        recursion no rank depends on a later key."""
        return None

    def ranks(self, q: Tensor, k: Tensor, skip_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`kmeans_ranks` of one batch of problems: q [zp, g, nq, d] or a causal level's
        [z, p, g, nq, d] view, k [zp, nk, d]."""
        hd = self.hash_dims
        return kmeans_ranks(
            q[..., :hd], k[..., :hd], self.num_projs, self.iterations, self.scale,
            self.planes, skip_keys, kernels=self.kernels,
        )  # fmt: skip
