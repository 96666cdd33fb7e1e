"""Triton kernels of k-means on a problem's keys (CUDA, or Triton's CPU interpreter;
imported lazily): each row's best (or nearest) centroid without materialising the
[rows, clusters] scores, and a Lloyd update of each centroid in place from its
cluster's run of the cluster-sorted rows, which is the same on every run (no atomics)."""

from __future__ import annotations

import triton
import triton.language as tl

from .forward import tile_scores


@triton.jit
def load_row_tile(
    X, n_rows, pairs, groups, x_stride_z, x_stride_p, x_stride_g, x_stride_row,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """This program's BLOCK_M rows of row problem r = (z * pairs + p) * groups + g (grid
    axis 0; axis 1 the row tile), read through the strides: (r, its centroid problem
    zp = z * pairs + p, the rows, which are real, the columns, which are real, the
    rows' values [BLOCK_M, D_PAD], 0 where not real)."""
    row_problem = tl.program_id(0).to(tl.int64)
    zp = row_problem // groups
    z, p, g = zp // pairs, zp % pairs, row_problem % groups
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    x_base = X + z * x_stride_z + p * x_stride_p + g * x_stride_g
    x_ptrs = x_base + rows[:, None].to(tl.int64) * x_stride_row + offs_d[None, :]
    x = tl.load(x_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    return row_problem, zp, rows, row_ok, offs_d, d_ok, x


@triton.jit
def best_centroid_kernel(
    X, C, Bias, Order, Out, Counts, FirstRow, n_rows, n_centroids, pairs, groups,
    x_stride_z, x_stride_p, x_stride_g, x_stride_row, factor,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    IEEE: tl.constexpr, NEAREST: tl.constexpr, ORDERED: tl.constexpr, COUNT: tl.constexpr,
):  # fmt: skip
    """Out[r, i] = argmax_c factor * x_i . C[zp, c] + Bias[zp, c] (the first on ties) for
    the rows i of row problem r = (z, p, g), flattened (z * pairs + p) * groups + g, at
    X + z x_stride_z + p x_stride_p + g x_stride_g + i x_stride_row; its centroids are
    those of problem zp = z * pairs + p: C [zp, c, D] float32, met in X's dtype; Bias
    [zp, c] float32; Out of an integer type. NEAREST: the nearest centroid instead
    (factor 2, bias -|c|^2 of the centroid in X's dtype; Bias is not read). ORDERED:
    index j stands for centroid Order[zp, j] (Bias is in that order already), so a
    renumbering of the centroids needs no copy of them. COUNT: each row i >=
    FirstRow[zp] also adds 1 to Counts[zp, Out[r, i]] (int32; integer atomics, so the
    same counts on every run)."""
    row_problem, zp, rows, row_ok, offs_d, d_ok, x = load_row_tile(
        X, n_rows, pairs, groups, x_stride_z, x_stride_p, x_stride_g, x_stride_row,
        D, D_PAD, BLOCK_M,
    )  # fmt: skip
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_index = tl.zeros([BLOCK_M], tl.int32)
    for c0 in range(0, n_centroids, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        c_ok = cols < n_centroids
        source = cols
        if ORDERED:
            source = tl.load(Order + zp * n_centroids + cols, mask=c_ok, other=0)
        c_ptrs = C + (zp * n_centroids + source[None, :]) * D + offs_d[:, None]
        c = tl.load(c_ptrs, mask=c_ok[None, :] & d_ok[:, None], other=0.0)
        c = c.to(X.dtype.element_ty)
        if NEAREST:
            c32 = c.to(tl.float32)
            bias = tl.where(c_ok, -tl.sum(c32 * c32, 0), float("-inf"))
            s = 2.0 * tile_scores(x, c, IEEE) + bias[None, :]
        else:
            bias = tl.load(Bias + zp * n_centroids + cols, mask=c_ok, other=float("-inf"))
            s = factor * tile_scores(x, c, IEEE) + bias[None, :]
        s = tl.where(c_ok[None, :], s, float("-inf"))
        # one reduction for the best score and its first column
        block_best, block_index = tl.max(s, 1, return_indices=True,
                                         return_indices_tie_break_left=True)  # fmt: skip
        block_index += c0
        better = block_best > best
        best_index = tl.where(better, block_index, best_index)
        best = tl.where(better, block_best, best)
    tl.store(Out + row_problem * n_rows + rows, best_index.to(Out.dtype.element_ty), mask=row_ok)
    if COUNT:
        counted = row_ok & (rows >= tl.load(FirstRow + zp))
        tl.atomic_add(Counts + zp * n_centroids + best_index, 1, mask=counted)


@triton.jit
def lloyd_update_kernel(
    X, Order, Starts, FirstRow, C, n_rows, n_clusters, x_stride_z, x_stride_row,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """C[z, c] (float32, in place) = the mean of cluster c's rows of problem z, or kept
    if it has none. Its rows are Order[z, Starts[z, c]:Starts[z, c + 1]] (the stable
    cluster-sorted order, int32); rows before FirstRow[z] take no part. Float32 sums
    in the sorted order: the same on every run. Each program reads and writes only its
    own centroid, so updating in place is safe."""
    cluster = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    first = tl.load(Starts + zp * (n_clusters + 1) + cluster)
    last = tl.load(Starts + zp * (n_clusters + 1) + cluster + 1)
    first_row = tl.load(FirstRow + zp)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    count = tl.zeros([BLOCK_N], tl.float32)
    for start in range(first, last, BLOCK_N):
        ok = start + offs_n < last
        row = tl.load(Order + zp * n_rows + start + offs_n, mask=ok, other=0)
        taken = ok & (row >= first_row)
        x_ptrs = X + zp * x_stride_z + row[:, None].to(tl.int64) * x_stride_row + offs_d[None, :]
        x = tl.load(x_ptrs, mask=taken[:, None] & d_ok[None, :], other=0.0)
        acc += x.to(tl.float32)
        count += taken.to(tl.float32)
    total = tl.sum(count, 0)
    at = (zp * n_clusters + cluster) * D + offs_d
    old = tl.load(C + at, mask=d_ok, other=0.0)
    mean = tl.sum(acc, 0) / tl.where(total > 0, total, 1.0)
    tl.store(C + at, tl.where(total > 0, mean, old), mask=d_ok)
