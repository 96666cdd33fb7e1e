"""The paper's finder: angular locality-sensitive hashing whose bucket order keeps near
buckets adjacent. A query and a key share a block where they share a bucket rank.

The ranks are torch ops on any device, or one Triton pass over the rows where the
kernels run (the same ranks). They depend on a row alone, so a call hashes its rows once
and every problem of its recursion reads its own slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..fused.support import FUSED_DTYPES, MAX_HEAD_DIM, triton_available
from ..fused.tuning import padded_width

# The hash kernel handles up to this many hyperplanes (one 16-wide matmul tile).
KERNEL_MAX_PROJS = 15


def rank_dtype(num_projs: int) -> torch.dtype:
    """Smallest integer type holding the ranks 0 .. 2**num_projs - 1 of num_projs
    hyperplanes and, where the bucket table keeps it (few hyperplanes), the bucket count
    2**num_projs: narrow keys make the per-level sorts several times faster than int64
    ones, and 8-bit keys take one radix pass where 16-bit ones take two."""
    if num_projs <= 7:
        return torch.uint8
    if num_projs <= 15:
        return torch.int16
    return torch.int32 if num_projs <= 31 else torch.int64


def gray_code_rank(bits: Tensor) -> Tensor:
    """Position of each Gray code in the Gray sequence.

    bits [..., r] (bool, most significant first) -> int64 [...]. Consecutive ranks are
    codes that differ in one hyperplane, so sorting by rank puts buckets that are
    angularly close next to each other (the sortLSH of the paper).
    """
    rank = torch.zeros(bits.shape[:-1], dtype=torch.int64, device=bits.device)
    prefix_parity = torch.zeros_like(rank)
    for i in range(bits.shape[-1]):
        # binary bit i = XOR of Gray bits 0..i
        prefix_parity = prefix_parity ^ bits[..., i].to(torch.int64)
        rank = (rank << 1) | prefix_parity
    return rank


def angular_lsh_rank(x: Tensor, hyperplanes: Tensor) -> Tensor:
    """Bucket rank of each row of x: x [..., n, d], hyperplanes [d, r] -> [..., n] in
    `rank_dtype(r)`.

    The sign of each projection is taken from x @ hyperplanes in x's dtype (float32
    accumulation).
    """
    with torch.no_grad():
        bits = (x @ hyperplanes.to(x.dtype)) > 0
        return gray_code_rank(bits).to(rank_dtype(hyperplanes.shape[-1]))


def fused_hash_usable(x: Tensor, num_projs: int) -> bool:
    """Whether the hash kernel serves these rows (CUDA, a dtype and width it takes)."""
    return (
        x.is_cuda and num_projs <= KERNEL_MAX_PROJS and x.dtype in FUSED_DTYPES
        and x.shape[-1] <= MAX_HEAD_DIM and triton_available()
    )  # fmt: skip


def lsh_rank(x: Tensor, hyperplanes: Tensor, kernels: bool = True) -> Tensor:
    """`angular_lsh_rank`, through the Triton pass where it runs (and kernels is True)."""
    if kernels and fused_hash_usable(x, hyperplanes.shape[-1]):
        return fused_lsh_rank(x, hyperplanes)
    return angular_lsh_rank(x, hyperplanes)


def fused_lsh_rank(x: Tensor, hyperplanes: Tensor) -> Tensor:
    """`angular_lsh_rank` in one Triton pass: x [..., n, d] (at most 15 hyperplanes,
    d <= 256) -> [..., n] in `rank_dtype(r)`."""
    from ..kernels.planning import lsh_rank_kernel

    *lead, n, d = x.shape
    x4 = x.reshape(-1, 1, n, d) if len(lead) != 2 else x
    if x4.stride(-1) != 1:
        x4 = x4.contiguous()
    b, h = x4.shape[:2]
    r = hyperplanes.shape[1]
    d_pad = padded_width(d)
    planes = torch.zeros(d_pad, 16, dtype=x.dtype, device=x.device)
    planes[:d, :r] = hyperplanes.to(device=x.device, dtype=x.dtype)
    rank = torch.empty(b, h, n, dtype=rank_dtype(r), device=x.device)
    block = 128 if d_pad <= 128 else 64
    grid = (math.ceil(n / block), b * h)
    with torch.no_grad():
        lsh_rank_kernel[grid](
            x4, planes, rank, n, h, x4.stride(0), x4.stride(1), x4.stride(2),
            D=d, D_PAD=d_pad, R=r, BLOCK=block, IEEE=x.dtype == torch.float32, num_warps=4,
        )  # fmt: skip
    return rank.view(*lead, n)


@dataclass(frozen=True)
class LshBlocks:
    """The LSH finder of one call: its hyperplanes and the leading columns it hashes.
    kernels=False keeps the hash in torch ops (backend "torch")."""

    planes: Tensor
    hash_dims: int
    kernels: bool = True

    def call_ranks(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Ranks of every query q [..., nq, d] and key k [..., nk, d] of the call, hashed
        once: a problem's ranks are its slices of these."""
        hd = self.hash_dims
        return lsh_rank(q[..., :hd], self.planes, self.kernels), lsh_rank(
            k[..., :hd], self.planes, self.kernels
        )

    def ranks(self, q: Tensor, k: Tensor, skip_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The ranks of one batch of problems' rows (the same as their slices of
        `call_ranks`); skip_keys changes nothing, as a rank depends on its row alone."""
        return self.call_ranks(q, k)
