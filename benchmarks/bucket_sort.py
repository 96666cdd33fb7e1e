"""Time the planner's counting sort against torch.sort on the shapes of a 131k forward.

    python benchmarks/bucket_sort.py > results/attention/bucket_sort.txt

On a GPU; prints one line per (shape, chunk, warps) of the placement pass, the
library's whole `stable_bucket_argsort` and torch.sort. The fastest chunk/warps pair
sets `bucket_sort.MIN_CHUNK` and the warps rule in `bucket_sort.bucket_scatter`.
"""

from __future__ import annotations

import datetime

import torch
import triton

from hf_hyper.attention.fused.bucket_sort import stable_bucket_argsort
from hf_hyper.attention.kernels.planning import bucket_scatter_kernel, chunk_histogram_kernel
from hf_hyper.eval.timing import time_cuda

# (rows, keys per row, buckets, key dtype): level-1 ranks and block numbers of the
# causal recursion, its last level's ranks, and the non-causal block numbers
SHAPES = [
    (32, 65536, 128, torch.uint8),
    (32, 65536, 256, torch.uint8),
    (512, 4096, 128, torch.uint8),
    (32, 131072, 512, torch.int16),
]


def _us(fn) -> float:
    return time_cuda(fn, warmup=3, repeats=20).ms * 1000


def placement_us(keys: torch.Tensor, buckets: int, chunk: int, warps: int) -> tuple[float, bool]:
    """The placement pass alone (its in-place start table restored before each run)."""
    rows, n = keys.shape
    n_chunks = n // chunk
    hist = torch.empty(rows, n_chunks, buckets, dtype=torch.int32, device=keys.device)
    chunk_histogram_kernel[(n_chunks, rows)](
        keys, hist, n, n, n_chunks, NB=buckets, CHUNK=chunk, num_warps=4
    )
    totals = hist.sum(1, dtype=torch.int32)
    first = totals.cumsum(1, dtype=torch.int32) - totals
    start0 = first[:, None, :] + hist.cumsum(1, dtype=torch.int32)  # as bucket_scatter passes
    out = torch.empty(rows, n, dtype=torch.int32, device=keys.device)

    def place() -> None:
        start = start0.clone()
        bucket_scatter_kernel[(n_chunks, rows)](
            keys, start, out, n, n, n_chunks, n, NB=buckets, CHUNK=chunk, num_warps=warps
        )

    place()
    right = torch.equal(out.long(), torch.sort(keys.long(), dim=-1, stable=True).indices)
    return _us(place) - _us(start0.clone), right


def main() -> None:
    today = datetime.date.today()
    print(f"# python benchmarks/bucket_sort.py ({today}; triton {triton.__version__})")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; median of 20")
    for rows, n, buckets, dtype in SHAPES:
        keys = torch.randint(0, buckets, (rows, n), device="cuda").to(dtype)
        shape = f"[{rows}, {n}] {buckets} buckets"
        sort = _us(lambda: torch.sort(keys, dim=-1, stable=True))  # noqa: B023
        ours = _us(lambda: stable_bucket_argsort(keys, buckets))  # noqa: B023
        print(f"{shape}: torch.sort {sort:.0f} us; stable_bucket_argsort {ours:.0f} us")
        for chunk in (256, 512, 1024):
            for warps in (1, 2, 4):
                if chunk >= buckets:
                    us, right = placement_us(keys, buckets, chunk, warps)
                    print(f"{shape} chunk {chunk} warps {warps}: placement {us:.0f} us"
                          f"{'' if right else ' WRONG ORDER'}")  # fmt: skip


if __name__ == "__main__":
    main()
