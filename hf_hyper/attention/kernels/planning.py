"""Triton kernels of the fused planner: the LSH hash, each query's key block, and the
counting sort's histogram, bookkeeping and placement passes (CUDA only; imported
lazily)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def lsh_rank_kernel(
    X, Planes, Rank,
    n_rows, heads, stride_b, stride_h, stride_n,
    D: tl.constexpr, D_PAD: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Gray-code rank of the sign pattern of BLOCK rows of x[b, h] against R <= 15
    hyperplanes (Planes: [D_PAD, 16] in x's dtype, zero-padded). One read of each row,
    one small write: the hash costs a pass over q and k, not a skinny GEMM plus a
    dozen integer passes."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, D_PAD)
    offs_r = tl.arange(0, 16)
    ptrs = X + b * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n
    x = tl.load(ptrs + offs_d[None, :], mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    planes = tl.load(Planes + offs_d[:, None] * 16 + offs_r[None, :])
    if IEEE:  # noqa: SIM108 (constexpr branch)
        proj = tl.dot(x, planes, input_precision="ieee")
    else:
        proj = tl.dot(x, planes)
    # hyperplane i is bit R-1-i of the Gray code (most significant first)
    weight = tl.where(offs_r < R, 1 << tl.maximum(R - 1 - offs_r, 0), 0)
    code = tl.sum(tl.where(proj > 0, weight[None, :], 0), 1)
    # Gray -> binary: every bit XORs all more significant bits
    code = code ^ (code >> 1)
    code = code ^ (code >> 2)
    code = code ^ (code >> 4)
    code = code ^ (code >> 8)
    tl.store(Rank + bh.to(tl.int64) * n_rows + rows, code.to(Rank.dtype.element_ty), mask=row_ok)


@triton.jit
def query_block_kernel(
    q_rank_ptr, starts_ptr, block_ptr,
    n_rows, rows_per_head, n_starts, key_block, n_blocks,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Key block of each query row of problem zp (the rule of `planning.query_blocks`:
    the spot (t + 1/2) / n of the way through its bucket's run of sorted keys, where
    starts[r] counts the keys of rank < r)."""
    zp = tl.program_id(1).to(tl.int64)
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = row < n_rows
    rank = tl.load(q_rank_ptr + zp * n_rows + row, mask=ok, other=0).to(tl.int32)
    first = tl.load(starts_ptr + zp * n_starts + rank, mask=ok, other=0).to(tl.int64)
    last = tl.load(starts_ptr + zp * n_starts + rank + 1, mask=ok, other=0).to(tl.int64)
    twice_t = 2 * (row % rows_per_head).to(tl.int64) + 1
    position = first + (last - first) * twice_t // (2 * rows_per_head)
    blk = tl.minimum(position // key_block, n_blocks - 1).to(tl.int32)
    tl.store(block_ptr + zp * n_rows + row, blk.to(block_ptr.dtype.element_ty), mask=ok)


@triton.jit
def chunk_histogram_kernel(
    keys_ptr, hist_ptr, n, row_stride, n_chunks,
    NB: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """hist[zp, c, b]: how many of keys[zp, c*CHUNK : (c+1)*CHUNK] equal b (< NB)."""
    c = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    i = c * CHUNK + tl.arange(0, CHUNK)
    ok = i < n
    key = tl.load(keys_ptr + zp * row_stride + i, mask=ok, other=0).to(tl.int32)
    counts = tl.histogram(key, NB, mask=ok)
    tl.store(hist_ptr + (zp * n_chunks + c) * NB + tl.arange(0, NB), counts)


@triton.jit
def bucket_scatter_kernel(
    keys_ptr, start_ptr, out_ptr, n, row_stride, n_chunks, out_stride,
    NB: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The stable counting sort's placement: out[zp, start[zp, c, b] + j] = i for the
    j-th element of key b (in index order) of chunk c, i its index in keys[zp].

    start[zp, c, b] arrives as (the bucket's first output spot + its elements in
    chunks up to and including c) and is turned in place into that minus the chunk's
    elements of keys up to b; an element's spot is then start[its key] + its position
    in the chunk sorted by (key, index)."""
    c = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    local = tl.arange(0, CHUNK)
    i = c * CHUNK + local
    ok = i < n
    key = tl.load(keys_ptr + zp * row_stride + i, mask=ok, other=0).to(tl.int32)
    bins = tl.arange(0, NB)
    row_ptr = start_ptr + (zp * n_chunks + c) * NB
    counts = tl.histogram(key, NB, mask=ok)
    tl.store(row_ptr + bins, tl.load(row_ptr + bins) - tl.cumsum(counts, 0))
    tl.debug_barrier()  # the row just written is gathered by every thread below
    # sort (key, index) pairs packed in one int32; elements past n sort last
    packed = tl.sort(tl.where(ok, key, NB) * CHUNK + local)
    key_sorted = packed // CHUNK
    valid = key_sorted < NB
    start = tl.load(row_ptr + key_sorted, mask=valid, other=0)
    value = (c * CHUNK + packed % CHUNK).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + zp * out_stride + start + local, value, mask=valid)


@triton.jit
def bucket_spots_kernel(
    hist_ptr, starts_ptr, tile_bucket_ptr,
    n_chunks, n_buckets, n_tiles,
    NB: tl.constexpr, TILE: tl.constexpr, BUCKETS: tl.constexpr, CHUNKS: tl.constexpr,
    TILE_BUCKETS: tl.constexpr, TILES: tl.constexpr, SEARCH_STEPS: tl.constexpr,
):  # fmt: skip
    """One row's counting-sort bookkeeping in one program, in place of a dozen torch ops.

    hist[zp, c, b] (chunk counts, NB wide) becomes the spot just past chunk c's elements
    of key b, each key's run starting at TILE * (the tiles of all smaller keys), a key of
    t elements taking ceil(t / TILE) tiles: what `bucket_scatter_kernel` consumes.
    starts[zp, b] = tiles before key b's run, starts[zp, n_buckets] = all tiles. With
    TILE_BUCKETS, tile_bucket[zp, t] = the key whose run holds tile t (the last key for
    tiles past the end) for t < n_tiles."""
    zp = tl.program_id(0).to(tl.int64)
    hist_row = hist_ptr + zp * n_chunks * NB
    starts_row = starts_ptr + zp * (n_buckets + 1)
    carry = tl.zeros((), dtype=tl.int32)
    for b0 in range(0, n_buckets, BUCKETS):
        bins = b0 + tl.arange(0, BUCKETS)
        bin_ok = bins < n_buckets
        total = tl.zeros((BUCKETS,), dtype=tl.int32)
        for c0 in range(0, n_chunks, CHUNKS):
            chunks = c0 + tl.arange(0, CHUNKS)
            ptrs = hist_row + chunks[:, None] * NB + bins[None, :]
            ok = (chunks < n_chunks)[:, None] & bin_ok[None, :]
            total += tl.sum(tl.load(ptrs, mask=ok, other=0), 0)
        tiles = (total + TILE - 1) // TILE
        first = carry + tl.cumsum(tiles, 0) - tiles
        tl.store(starts_row + bins, first, mask=bin_ok)
        carry += tl.sum(tiles, 0)
        spot = first * TILE
        for c0 in range(0, n_chunks, CHUNKS):
            chunks = c0 + tl.arange(0, CHUNKS)
            ptrs = hist_row + chunks[:, None] * NB + bins[None, :]
            ok = (chunks < n_chunks)[:, None] & bin_ok[None, :]
            counts = tl.load(ptrs, mask=ok, other=0)
            tl.store(ptrs, spot[None, :] + tl.cumsum(counts, 0), mask=ok)
            spot += tl.sum(counts, 0)
    tl.store(starts_row + n_buckets, carry)
    if TILE_BUCKETS:
        tl.debug_barrier()  # the starts just stored are searched by every thread below
        for t0 in range(0, n_tiles, TILES):
            tile = t0 + tl.arange(0, TILES)
            # the keys whose runs end at or before the tile: searchsorted(ends, tile, right)
            lo = tl.zeros((TILES,), dtype=tl.int32)
            hi = tl.full((TILES,), 0, dtype=tl.int32) + n_buckets
            for _ in tl.static_range(SEARCH_STEPS):
                open_ = lo < hi
                mid = (lo + hi) // 2
                end = tl.load(starts_row + mid + 1, mask=open_, other=0)
                right = open_ & (end <= tile)
                lo = tl.where(right, mid + 1, lo)
                hi = tl.where(open_ & ~right, mid, hi)
            bucket = tl.minimum(lo, n_buckets - 1)
            out = tile_bucket_ptr + zp * n_tiles + tile
            tl.store(out, bucket.to(tile_bucket_ptr.dtype.element_ty), mask=tile < n_tiles)
