"""Stable counting sort of small integer keys, for the fused planner's per-level sorts.

The keys there are LSH ranks (< 2**lsh_num_projs) and key-block numbers (< n_blocks).
torch.sort runs a general segmented radix sort on them: a dozen launches and several
passes per call, twice per recursion level. Knowing the key range, one histogram pass
and one placement pass do the same work. Wider key ranges fall back to torch.sort with
the same result. The gain is GPU time: called alone, the few launches here leave the
GPU waiting on the host (results/attention/bucket_sort.txt); in the forward they queue
behind the kernels.
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
# fastest (benchmarks/bucket_sort.py, results/attention/bucket_sort.txt).
MIN_CHUNK = 256


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
    pass it to `bucket_scatter` and `bucket_totals`."""
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
    out[:, :n] is the stable argsort.
    """
    rows, n = keys.shape
    n_buckets = first.shape[1]
    if not _use_triton(keys, n_buckets):
        sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
        totals = hist.sum(1, dtype=torch.int64)
        bucket_first = totals.cumsum(1) - totals  # sorted position of each key's first
        key = sorted_keys.long()
        within = torch.arange(n, device=keys.device) - bucket_first.gather(1, key)
        out.scatter_(1, first.long().gather(1, key) + within, order.to(out.dtype))
        return
    from ..kernels.planning import bucket_scatter_kernel

    chunk, width = _chunk(n_buckets), hist.shape[2]
    first = torch.nn.functional.pad(first.to(torch.int32), (0, width - n_buckets))
    # in place, each chunk's spot just past its own elements of each key
    hist.cumsum_(1).add_(first[:, None, :])
    bucket_scatter_kernel[(hist.shape[1], rows)](
        keys, hist, out, n, keys.stride(0), hist.shape[1], out.stride(0),
        NB=width, CHUNK=chunk, num_warps=max(1, chunk // 1024),
    )  # fmt: skip


def stable_bucket_argsort(
    keys: Tensor, n_buckets: int, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(order int32 [rows, n], starts int32 [rows, n_buckets + 1]): the stable argsort
    of keys [rows, n] in [0, n_buckets) and where each key's run begins in it. out: an
    int32 [rows, n] view (any row stride) to write the order into, e.g. the head of a
    larger per-row list, which then needs no copy."""
    hist = bucket_histogram(keys, n_buckets)
    totals = bucket_totals(hist, n_buckets)
    starts = torch.nn.functional.pad(totals.cumsum(1, dtype=torch.int32), (1, 0))
    order = torch.empty(keys.shape, dtype=torch.int32, device=keys.device) if out is None else out
    bucket_scatter(keys, hist, starts[:, :-1], order)
    return order, starts


__all__ = ["bucket_histogram", "bucket_scatter", "bucket_totals", "stable_bucket_argsort"]
