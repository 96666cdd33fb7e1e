"""Stable counting sort of small integer keys, for the fused planner's per-level sorts.

The keys there are LSH ranks (< 2**lsh_num_projs) and key-block numbers (< n_blocks).
torch.sort runs a general segmented radix sort on them: a dozen launches and several
passes per call, twice per recursion level. Knowing the key range, a histogram pass
per chunk, a bookkeeping pass per row (where each key's run starts, each chunk's spots;
runs may start on tiles, as the query tiles of a block do) and a placement pass do the
same work. Wider key ranges fall back to torch.sort with the same result. The gain is
GPU time and launches: called alone, the few launches here leave the GPU waiting on
the host; in the forward they queue behind the kernels, and in a graph replay each
launch left out is time saved.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

# Buckets the Triton passes take. A chunk holds at least as many elements as there are
# buckets, so the histogram [rows, chunks, buckets] stays within one int32 per key.
MAX_BUCKETS = 4096
# Each chunk is sorted in registers by one program; the smallest chunks placed keys
# fastest (benchmarks/bucket_sort.py times them).
MIN_CHUNK = 256
# The bookkeeping pass walks a row's [chunks, buckets] counts in tiles of this size.
SPOTS_CHUNKS = 16
SPOTS_BUCKETS = 128
SPOTS_TILES = 256


def _buckets_pad(n_buckets: int) -> int:
    return 1 << max(n_buckets - 1, 1).bit_length()


def _chunk(n_buckets: int) -> int:
    return max(MIN_CHUNK, _buckets_pad(n_buckets))


def _use_triton(keys: Tensor, n_buckets: int) -> bool:
    """CUDA keys, or any under Triton's interpreter (how the CPU tests run the kernels)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return (keys.is_cuda or interpreted) and n_buckets <= MAX_BUCKETS


def bucket_histogram(keys: Tensor, n_buckets: int) -> Tensor:
    """Counts of each key per chunk of each row: keys [rows, n] (integers in
    [0, n_buckets), last dim contiguous) -> int32 [rows, chunks, >= n_buckets];
    pass it to `bucket_spots` then `bucket_place` (or to `bucket_scatter`), or to
    `bucket_totals`."""
    rows, n = keys.shape
    if not _use_triton(keys, n_buckets):
        counts = torch.zeros(rows, 1, n_buckets, dtype=torch.int32, device=keys.device)
        return counts.scatter_add_(2, keys.long()[:, None], counts.new_ones(rows, 1, n))
    from ..kernels.planning import chunk_histogram_kernel

    chunk, width = _chunk(n_buckets), _buckets_pad(n_buckets)
    n_chunks = math.ceil(n / chunk)
    hist = torch.empty(rows, n_chunks, width, dtype=torch.int32, device=keys.device)
    chunk_histogram_kernel[(n_chunks, rows)](
        keys, hist, n, keys.stride(0), n_chunks, NB=width, CHUNK=chunk, num_warps=4
    )
    return hist


def bucket_totals(hist: Tensor, n_buckets: int) -> Tensor:
    """int32 [rows, n_buckets]: each key's count in its row, from `bucket_histogram`."""
    return hist.sum(1, dtype=torch.int32)[:, :n_buckets]


def bucket_scatter(keys: Tensor, hist: Tensor, first: Tensor, out: Tensor) -> None:
    """Stable counting-sort placement: the j-th element (in index order) of key b in
    row r writes its index to out[r, first[r, b] + j].

    keys [rows, n] as given to `bucket_histogram`, hist its result (consumed: it is
    overwritten with the chunks' spots, so the placement needs no second table of its
    size), first [rows, n_buckets] integers, out [rows, m] int32, any row stride (spots
    no element reaches keep their value). With first = exclusive cumsum of the totals,
    out[:, :n] is the stable argsort (`stable_bucket_argsort` does that in fewer
    launches).
    """
    n_buckets = first.shape[1]
    if not _use_triton(keys, n_buckets):
        _place_torch(keys, first, out)
        return
    width = hist.shape[2]
    first = torch.nn.functional.pad(first.to(torch.int32), (0, width - n_buckets))
    # in place, each chunk's spot just past its own elements of each key
    hist.cumsum_(1).add_(first[:, None, :])
    _place(keys, hist, n_buckets, out)


def bucket_spots(
    hist: Tensor, n_buckets: int, tile: int = 1, tile_bucket: Tensor | None = None
) -> Tensor:
    """The counting sort's bookkeeping in one pass: hist (`bucket_histogram`'s result,
    consumed) becomes the spots `bucket_place` writes to, with each key's run starting
    on a multiple of `tile` (a key of t elements takes ceil(t / tile) tiles). Returns
    starts int32 [rows, n_buckets + 1]: the tiles before each key's run (tile 1:
    elements, the exclusive cumsum of the totals), the last entry all tiles. With
    tile_bucket [rows, n_tiles] (integers), also writes the key whose run holds each
    tile (the last key for tiles past the end)."""
    rows, n_chunks, width = hist.shape
    starts = torch.empty(rows, n_buckets + 1, dtype=torch.int32, device=hist.device)
    if not _use_triton(hist, n_buckets):
        tiles = (hist.sum(1, dtype=torch.int32)[:, :n_buckets] + tile - 1) // tile
        starts[:, 1:] = tiles.cumsum(1)
        starts[:, 0] = 0
        first = torch.nn.functional.pad(starts[:, :-1] * tile, (0, width - n_buckets))
        hist.cumsum_(1).add_(first[:, None, :])
        if tile_bucket is not None:
            spots = torch.arange(tile_bucket.shape[1], device=hist.device).expand(rows, -1)
            found = torch.searchsorted(starts[:, 1:].contiguous(), spots.contiguous(), right=True)
            tile_bucket.copy_(found.clamp_(max=n_buckets - 1))
        return starts
    from ..kernels.planning import bucket_spots_kernel

    n_tiles = 0 if tile_bucket is None else tile_bucket.shape[1]
    buckets = min(_buckets_pad(n_buckets), SPOTS_BUCKETS)
    bucket_spots_kernel[(rows,)](
        hist, starts, starts if tile_bucket is None else tile_bucket,
        n_chunks, n_buckets, n_tiles,
        NB=width, TILE=tile, BUCKETS=buckets, CHUNKS=SPOTS_CHUNKS,
        TILE_BUCKETS=tile_bucket is not None, TILES=SPOTS_TILES,
        SEARCH_STEPS=max(1, n_buckets.bit_length()), num_warps=4,
    )  # fmt: skip
    return starts


def bucket_place(keys: Tensor, hist: Tensor, n_buckets: int, out: Tensor) -> None:
    """The placement after `bucket_spots`: every element of keys [rows, n] writes its
    index to its spot in out [rows, m] int32 (any row stride), in index order within
    each key's run."""
    if not _use_triton(keys, n_buckets):
        # the last chunk's spots are each key's first spot plus its count
        _place_torch(keys, hist[:, -1, :n_buckets], out, past_end=True)
        return
    _place(keys, hist, n_buckets, out)


def _place_torch(keys: Tensor, first: Tensor, out: Tensor, past_end: bool = False) -> None:
    """The placement in torch ops from each key's first spot (past_end: from the spot
    just past its run)."""
    n = keys.shape[1]
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    key = sorted_keys.long()
    totals = torch.zeros(first.shape, dtype=torch.int64, device=keys.device)
    totals.scatter_add_(1, key, torch.ones_like(key))
    first = first.long() - totals if past_end else first.long()
    bucket_first = totals.cumsum(1) - totals  # sorted position of each key's first
    within = torch.arange(n, device=keys.device) - bucket_first.gather(1, key)
    out.scatter_(1, first.gather(1, key) + within, order.to(out.dtype))


def _place(keys: Tensor, spots: Tensor, n_buckets: int, out: Tensor) -> None:
    from ..kernels.planning import bucket_scatter_kernel

    rows, n = keys.shape
    chunk = _chunk(n_buckets)
    bucket_scatter_kernel[(spots.shape[1], rows)](
        keys, spots, out, n, keys.stride(0), spots.shape[1], out.stride(0),
        NB=spots.shape[2], CHUNK=chunk, num_warps=max(1, chunk // 1024),
    )  # fmt: skip


def stable_bucket_argsort(
    keys: Tensor, n_buckets: int, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(order int32 [rows, n], starts int32 [rows, n_buckets + 1]): the stable argsort
    of keys [rows, n] in [0, n_buckets) and where each key's run begins in it. out: an
    int32 [rows, n] view (any row stride) to write the order into, e.g. the head of a
    larger per-row list, which then needs no copy. Three launches: histogram,
    bookkeeping, placement."""
    hist = bucket_histogram(keys, n_buckets)
    starts = bucket_spots(hist, n_buckets)
    order = torch.empty(keys.shape, dtype=torch.int32, device=keys.device) if out is None else out
    bucket_place(keys, hist, n_buckets, order)
    return order, starts


def bucket_tiles(keys: Tensor, n_buckets: int, tile: int) -> tuple[Tensor, Tensor]:
    """The elements of keys [rows, n] (integers in [0, n_buckets), last dim contiguous)
    grouped by key into tiles of `tile` slots, one key a tile, in index order within a
    key: (slot_index int32 [rows, tiles * tile], n on an empty slot; tile_bucket int64
    [rows, tiles], the key of each tile, the last key for tiles past the used ones).
    tiles = (n + n_buckets * (tile - 1)) // tile bounds the tiles used however unevenly
    the keys spread. The order `planning.pack_query_tiles` gives, in three launches."""
    rows, n = keys.shape
    hist = bucket_histogram(keys, n_buckets)
    n_tiles = (n + n_buckets * (tile - 1)) // tile
    tile_bucket = torch.empty(rows, n_tiles, dtype=torch.int64, device=keys.device)
    bucket_spots(hist, n_buckets, tile, tile_bucket)
    slot_index = torch.full((rows, n_tiles * tile), n, dtype=torch.int32, device=keys.device)
    bucket_place(keys, hist, n_buckets, slot_index)
    return slot_index, tile_bucket


__all__ = [
    "bucket_histogram",
    "bucket_place",
    "bucket_scatter",
    "bucket_spots",
    "bucket_tiles",
    "bucket_totals",
    "stable_bucket_argsort",
]
