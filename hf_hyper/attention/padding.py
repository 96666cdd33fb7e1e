"""Row gathers and length padding shared by the torch path and the fused launchers."""

from __future__ import annotations

import torch
from torch import Tensor


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x [..., n, d] with `rows` zero rows appended to dim -2 (x itself if none)."""
    return x if rows == 0 else torch.nn.functional.pad(x, (0, 0, 0, rows))


def pad_end(x: Tensor, count: int, value: float = 0) -> Tensor:
    """x with `count` entries of `value` appended to its last dim (x itself if none)."""
    return torch.nn.functional.pad(x, (0, count), value=value) if count else x


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """x [..., n, d], order [..., n] (rows to take) -> [..., n, d], via one flat index."""
    *lead, n, d = x.shape
    flat = x.reshape(-1, d)
    groups = flat.shape[0] // n
    base = torch.arange(groups, device=x.device).view(*lead, 1) * n
    return flat.index_select(0, (order + base).reshape(-1)).view(*lead, -1, d)
