"""Launchers of the k-means kernels (`kernels.kmeans`): each row's best (or nearest)
centroid and one Lloyd iteration, for `clustering` on CUDA inputs (no autograd: the
clustering is a plan, not part of the output's graph)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..planning import block_id_dtype
from .support import FUSED_DTYPES, MAX_HEAD_DIM, triton_available
from .tuning import padded_width

# (BLOCK_M rows, BLOCK_C centroids, num_warps) of the best-centroid kernel: every
# program reads all centroids, so tall row tiles keep that traffic small
BEST_TILE = (128, 64, 8)
BEST_TILE_IEEE = (64, 32, 4)
SUMS_BLOCK_N = 64  # rows per step of the Lloyd-update kernel


def kernels_can_cluster(x: Tensor) -> bool:
    """Whether the k-means kernels serve these rows (CUDA, a dtype and width they take)."""
    return (
        x.is_cuda and triton_available() and x.dtype in FUSED_DTYPES
        and x.shape[-1] <= MAX_HEAD_DIM
    )  # fmt: skip


def _rows_view(x: Tensor) -> Tensor:
    """x [z, n, d] with unit stride along d (a view if it has one already)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def best_centroid(
    x: Tensor,
    centroids: Tensor,
    factor: float = 2.0,
    bias: Tensor | None = None,
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """argmax over clusters of factor * x.c + bias: x [z, n, d], centroids [z, c, d]
    (float32), bias [z, c] -> [z, n] of the integer dtype (one that holds c); bias
    None: each row's nearest centroid (as factor 2, bias -|c|^2). 16-bit x meets the
    centroids rounded to its dtype (tensor-core dots, and the norms of the rounded
    centroids); float32 x exact dots."""
    from ..kernels.kmeans import best_centroid_kernel

    x = _rows_view(x)
    z, n_rows, dim = x.shape
    n_centroids = centroids.shape[1]
    out = torch.empty(z, n_rows, dtype=dtype, device=x.device)
    ieee = x.dtype == torch.float32
    block_m, block_c, warps = BEST_TILE_IEEE if ieee else BEST_TILE
    nearest = bias is None
    bias = centroids if nearest else bias.float().contiguous()  # not read when nearest
    best_centroid_kernel[(-(-n_rows // block_m), z)](
        x, centroids.to(x.dtype).contiguous(), bias, out, n_rows, n_centroids, x.stride(0),
        x.stride(1), factor, D=dim, D_PAD=padded_width(dim), BLOCK_M=block_m,
        BLOCK_C=block_c, IEEE=ieee, NEAREST=nearest, num_warps=warps,
    )  # fmt: skip
    return out


def lloyd_step(x: Tensor, centroids: Tensor, weight: Tensor) -> Tensor:
    """One of Lloyd's iterations: each row of x [z, n, d] to its nearest centroid, then
    each centroid [z, c, d] (float32) to the weighted mean of its rows (weight [z, n];
    a cluster whose rows weigh nothing keeps its centroid) -> new centroids, float32 and
    the same on every run."""
    from ..kernels.kmeans import lloyd_update_kernel

    x = _rows_view(x)
    z, n_rows, dim = x.shape
    n_clusters = centroids.shape[1]
    assign = best_centroid(x, centroids, dtype=block_id_dtype(n_clusters))
    sorted_assign, order = torch.sort(assign, dim=-1, stable=True)
    weight = weight.float()
    new = torch.empty_like(centroids)
    lloyd_update_kernel[(n_clusters, z)](
        x, sorted_assign, order, weight, centroids.contiguous(), new, n_rows, n_clusters,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        max(1, n_rows.bit_length() + 1), D=dim, D_PAD=padded_width(dim),
        BLOCK_N=SUMS_BLOCK_N, num_warps=4,
    )  # fmt: skip
    return new
