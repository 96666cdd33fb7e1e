"""Triton kernels of k-means on a problem's keys (CUDA, or Triton's CPU interpreter;
imported lazily): each row's best (or nearest) centroid without materialising the
[rows, clusters] scores, and a Lloyd update from each cluster's weighted sum over its
run of the cluster-sorted rows, which is the same on every run (no atomics)."""

from __future__ import annotations

import triton
import triton.language as tl

from .forward import tile_scores


@triton.jit
def best_centroid_kernel(
    X, C, Bias, Out, n_rows, n_centroids, x_stride_z, x_stride_row, factor,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    IEEE: tl.constexpr, NEAREST: tl.constexpr,
):  # fmt: skip
    """Out[z, r] = argmax_c factor * X[z, r] . C[z, c] + Bias[z, c] (the first on ties):
    X rows of D elements at the given strides, C [z, c, D] in X's dtype, Bias [z, c]
    float32; Out of an integer type. NEAREST: the nearest centroid instead (factor 2,
    bias -|c|^2, from C as stored; Bias is not read)."""
    zp = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    x_ptrs = X + zp * x_stride_z + rows[:, None].to(tl.int64) * x_stride_row + offs_d[None, :]
    x = tl.load(x_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_index = tl.zeros([BLOCK_M], tl.int32)
    for c0 in range(0, n_centroids, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        c_ok = cols < n_centroids
        c_ptrs = C + (zp * n_centroids + cols[None, :]) * D + offs_d[:, None]
        c = tl.load(c_ptrs, mask=c_ok[None, :] & d_ok[:, None], other=0.0)
        if NEAREST:
            c32 = c.to(tl.float32)
            bias = tl.where(c_ok, -tl.sum(c32 * c32, 0), float("-inf"))
            s = 2.0 * tile_scores(x, c, IEEE) + bias[None, :]
        else:
            bias = tl.load(Bias + zp * n_centroids + cols, mask=c_ok, other=float("-inf"))
            s = factor * tile_scores(x, c, IEEE) + bias[None, :]
        s = tl.where(c_ok[None, :], s, float("-inf"))
        block_best = tl.max(s, 1)
        block_index = tl.argmax(s, 1) + c0
        better = block_best > best
        best_index = tl.where(better, block_index, best_index)
        best = tl.where(better, block_best, best)
    tl.store(Out + zp * n_rows + rows, best_index.to(Out.dtype.element_ty), mask=row_ok)


@triton.jit
def _first_at_least(sorted_row, n_rows, value, n_steps):
    """Index of the first entry >= value in the ascending sorted_row[0:n_rows] (n_rows if
    none), by bisection in n_steps >= log2(n_rows + 1) steps."""
    lo = n_rows - n_rows
    hi = n_rows + 0
    for _ in range(n_steps):
        mid = (lo + hi) // 2
        entry = tl.load(sorted_row + tl.minimum(mid, n_rows - 1)).to(tl.int32)
        active = lo < hi
        below = entry < value
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & (entry >= value), mid, hi)
    return lo


@triton.jit
def lloyd_update_kernel(
    X, Sorted, Order, Weight, Old, New, n_rows, n_clusters, x_stride_z, x_stride_row,
    weight_stride_z, weight_stride_row, n_steps,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """New[z, c] = the weighted mean of cluster c's rows, or Old[z, c] if they weigh
    nothing. Its rows are Order[z, a:b], where Sorted[z] (each row's cluster, ascending,
    Order its permutation) holds c; a and b are found by bisection, so no counts pass
    through memory. Float32 sums in the sorted order: the same on every run."""
    cluster = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    sorted_row = Sorted + zp * n_rows
    first = _first_at_least(sorted_row, n_rows, cluster, n_steps)
    last = _first_at_least(sorted_row, n_rows, cluster + 1, n_steps)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    count = tl.zeros([BLOCK_N], tl.float32)
    for start in range(first, last, BLOCK_N):
        ok = start + offs_n < last
        row = tl.load(Order + zp * n_rows + start + offs_n, mask=ok, other=0).to(tl.int64)
        w = tl.load(Weight + zp * weight_stride_z + row * weight_stride_row, mask=ok, other=0.0)
        x_ptrs = X + zp * x_stride_z + row[:, None] * x_stride_row + offs_d[None, :]
        x = tl.load(x_ptrs, mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        acc += x * w[:, None]
        count += w
    total = tl.sum(count, 0)
    at = (zp * n_clusters + cluster) * D + offs_d
    old = tl.load(Old + at, mask=d_ok, other=0.0)
    mean = tl.sum(acc, 0) / tl.where(total > 0, total, 1.0)
    tl.store(New + at, tl.where(total > 0, mean, old), mask=d_ok)
