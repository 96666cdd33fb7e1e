"""The angular LSH rank in one Triton pass over the rows (same ranks as `lsh.py`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..lsh import angular_lsh_rank, rank_dtype
from .support import triton_available
from .tuning import padded_width

# The hash kernel handles up to this many hyperplanes (one 16-wide matmul tile).
FUSED_MAX_PROJS = 15


def fused_hash_usable(x: Tensor, num_projs: int) -> bool:
    if not x.is_cuda or num_projs > FUSED_MAX_PROJS or x.shape[-1] > 256:
        return False
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return triton_available()


def lsh_rank(x: Tensor, hyperplanes: Tensor) -> Tensor:
    """`angular_lsh_rank`, through the Triton pass where it runs."""
    if fused_hash_usable(x, hyperplanes.shape[-1]):
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
