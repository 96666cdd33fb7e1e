"""Angular locality-sensitive hashing whose bucket order keeps near buckets adjacent."""

from __future__ import annotations

import torch
from torch import Tensor

# The fused hash kernel handles up to this many hyperplanes (one 16-wide matmul tile).
FUSED_MAX_PROJS = 15


def rank_dtype(num_projs: int) -> torch.dtype:
    """Smallest integer type holding ranks of num_projs hyperplanes and the bucket count
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


def _fused_hash_usable(x: Tensor, num_projs: int) -> bool:
    if not x.is_cuda or num_projs > FUSED_MAX_PROJS or x.shape[-1] > 256:
        return False
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    from .fused import triton_available

    return triton_available()


def angular_lsh_rank(x: Tensor, hyperplanes: Tensor) -> Tensor:
    """Bucket rank of each row of x: x [..., n, d], hyperplanes [d, r] -> [..., n] in
    `rank_dtype(r)`.

    The sign of each projection is taken from x @ hyperplanes in x's dtype (float32
    accumulation). On CUDA one Triton kernel reads each row once and writes its rank;
    elsewhere torch computes the same bits.
    """
    num_projs = hyperplanes.shape[-1]
    with torch.no_grad():
        if _fused_hash_usable(x, num_projs):
            from .fused import fused_lsh_rank

            return fused_lsh_rank(x, hyperplanes)
        bits = (x @ hyperplanes.to(x.dtype)) > 0
        return gray_code_rank(bits).to(rank_dtype(num_projs))
