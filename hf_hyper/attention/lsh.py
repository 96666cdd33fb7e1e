"""Angular locality-sensitive hashing whose bucket order keeps near buckets adjacent."""

from __future__ import annotations

import torch
from torch import Tensor


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
    """Bucket rank of each row of x: x [..., n, d], hyperplanes [d, r] -> int64 [..., n]."""
    with torch.no_grad():
        bits = (x @ hyperplanes.to(x.dtype)) > 0
        return gray_code_rank(bits)
