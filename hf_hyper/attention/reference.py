"""Plain, obviously-correct attention for tests and error reports (materialises n x m)."""

from __future__ import annotations

import torch
from torch import Tensor


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
        n_query, n_key = q.shape[2], k.shape[2]
        rows = torch.arange(n_query, device=q.device)[:, None] + (n_key - n_query)
        scores = scores.masked_fill(torch.arange(n_key, device=q.device) > rows, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.softmax(scores, dim=-1) @ v, lse
