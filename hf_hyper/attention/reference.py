"""Plain, obviously-correct attention for tests and error reports (materialises n x m)."""

from __future__ import annotations

import torch
from torch import Tensor

from .masks import future_key_mask


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    bias: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Attention computed in `dtype` with repeated K/V for GQA.

    q [b, hq, nq, d], k/v [b, hk, nk, d(v)], optional additive bias broadcastable to
    [b, hq, nq, nk]. Causal queries are the last nq positions. Returns (out, lse).
    """
    groups = q.shape[1] // k.shape[1]
    k = k.to(dtype).repeat_interleave(groups, dim=1)
    v = v.to(dtype).repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.to(dtype) @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.to(dtype)
    if causal:
        hidden = future_key_mask(q.shape[2], k.shape[2], q.device)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.softmax(scores, dim=-1) @ v, lse
