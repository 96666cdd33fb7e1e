"""Launchers of the k-means kernels (`kernels.kmeans`): each row's best centroid and
each cluster's weighted sum, for `clustering` on CUDA inputs (no autograd: the
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
SUMS_BLOCK_N = 64  # rows per step of the cluster-sums kernel


def kernels_can_cluster(x: Tensor) -> bool:
    """Whether the k-means kernels serve these rows (CUDA, a dtype and width they take)."""
    return (
        x.is_cuda and triton_available() and x.dtype in FUSED_DTYPES
        and x.shape[-1] <= MAX_HEAD_DIM
    )  # fmt: skip


def _rows_view(x: Tensor) -> Tensor:
    """x [z, n, d] with unit stride along d (a view if it has one already)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def best_centroid(x: Tensor, centroids: Tensor, factor: float, bias: Tensor) -> Tensor:
    """argmax over clusters of factor * x.c + bias: x [z, n, d], centroids [z, c, d]
    (float32), bias [z, c] -> [z, n] int64. 16-bit x meets the centroids rounded to its
    dtype (tensor-core dots); float32 x exact dots."""
    from ..kernels.kmeans import best_centroid_kernel

    x = _rows_view(x)
    z, n_rows, dim = x.shape
    n_centroids = centroids.shape[1]
    out = torch.empty(z, n_rows, dtype=torch.int64, device=x.device)
    ieee = x.dtype == torch.float32
    block_m, block_c, warps = BEST_TILE_IEEE if ieee else BEST_TILE
    best_centroid_kernel[(-(-n_rows // block_m), z)](
        x, centroids.to(x.dtype).contiguous(), bias.float().contiguous(), out, n_rows,
        n_centroids, x.stride(0), x.stride(1), factor, D=dim, D_PAD=padded_width(dim),
        BLOCK_M=block_m, BLOCK_C=block_c, IEEE=ieee, num_warps=warps,
    )  # fmt: skip
    return out


def cluster_sums(
    x: Tensor, assign: Tensor, weight: Tensor, n_clusters: int
) -> tuple[Tensor, Tensor]:
    """Weighted sum and weight of the rows of each cluster: x [z, n, d], assign [z, n]
    (each row's cluster), weight [z, n] float32 -> (sums [z, c, d], counts [z, c]),
    float32 and the same on every run."""
    from ..kernels.kmeans import cluster_sums_kernel

    x = _rows_view(x)
    z, n_rows, dim = x.shape
    _, order = torch.sort(assign.to(block_id_dtype(n_clusters)), dim=-1, stable=True)
    members = torch.zeros(z, n_clusters, dtype=torch.int64, device=x.device)
    members.scatter_add_(1, assign, torch.ones_like(assign))  # integer adds: exact
    starts = torch.nn.functional.pad(members.cumsum(dim=1), (1, 0))
    sums = torch.empty(z, n_clusters, dim, dtype=torch.float32, device=x.device)
    counts = torch.empty(z, n_clusters, dtype=torch.float32, device=x.device)
    cluster_sums_kernel[(n_clusters, z)](
        x, order.contiguous(), starts, weight.float().contiguous(), sums, counts, n_rows,
        n_clusters, x.stride(0), x.stride(1), D=dim, D_PAD=padded_width(dim),
        BLOCK_N=SUMS_BLOCK_N, num_warps=4,
    )  # fmt: skip
    return sums, counts
