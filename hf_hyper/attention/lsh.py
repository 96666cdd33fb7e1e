"""Angular locality-sensitive hashing whose bucket order keeps near buckets adjacent.

Plain torch on any device; the fused path has its own one-pass hash kernel
(`fused.hashing`) that computes the same ranks."""

from __future__ import annotations

import torch
from torch import Tensor


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
