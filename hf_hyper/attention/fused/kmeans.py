"""Launchers of the k-means kernels (`kernels.kmeans`): each row's best (or nearest)
centroid and one Lloyd iteration, for `clustering` on CUDA inputs (no autograd: the
clustering is a plan, not part of the output's graph)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..planning import block_id_dtype
from .bucket_sort import stable_bucket_argsort
from .support import FUSED_DTYPES, MAX_HEAD_DIM, triton_available
from .tuning import padded_width

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
