"""Exact attention for the last rows of a causal call: the exact tail.

The last queries of a prefill are where generation reads the context (a LongBench or
needle prompt ends with its question), and one needle token thousands back is what an
approximation loses first. Attending those W rows exactly costs W n work, nothing next to
the call's n^2 / 2; what it cannot avoid is reading every key and value once. On CUDA two
flash calls do it with few launches: the rectangle (every tail row sees all keys before
the tail; a key head's query heads stack as rows, so GQA needs no copies) and the
triangle (the tail's own keys, causal), merged by their log-sum-exp. Elsewhere, and
wherever a gradient must reach the queries through the log-sum-exp, torch ops compute it.

Layout: [batch, heads, seq, head_dim], key/value heads may be fewer (GQA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blockwise import attention_with_lse, causal_mask_fn, merge_by_lse


def exact_tail_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Causal exact attention of the last rows: q [b, hq, w, d] are the last w positions
    of k [b, hk, n, d], v [b, hk, n, dv] -> (out [b, hq, w, dv] float32 or float64,
    lse [b, hq, w] of the same dtype)."""
    return exact_attention(q, k, v, scale, causal=True)


def exact_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
) -> tuple[Tensor, Tensor]:
    """`exact_tail_attention`, or with causal=False every query against every key: in
    flash calls where `flash_runs`, else in torch ops."""
    if flash_runs(q, k, v):
        return _flash_attention(q, k, v, scale, causal)
    return _torch_ops_attention(q, k, v, scale, causal)


def _torch_ops_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
) -> tuple[Tensor, Tensor]:
    b, hq, w, d = q.shape
    hk, n, dv = k.shape[1], k.shape[2], v.shape[-1]
    # [b, h, n, d] -> the internal layout [b*hk, g, n, d] / [b*hk, n, d]; blockwise, not
    # torch_backend, so this module stays below the fused package in the import order
    out, lse = attention_with_lse(
        q.reshape(b * hk, hq // hk, w, d), k.reshape(b * hk, n, d), v.reshape(b * hk, n, dv),
        scale, causal_mask_fn(w, n, q.device) if causal else None,
    )  # fmt: skip
    return out.reshape(b, hq, w, dv), lse.reshape(b, hq, w)


def flash_runs(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the tail runs in PyTorch's flash kernel: CUDA (sm80+), 16-bit, head sizes
    the kernel has, and no gradient that would need the log-sum-exp's."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    d, dv = q.shape[-1], v.shape[-1]
    if d != dv or d % 8 or d > 256:
        return False
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention"):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    return torch.cuda.get_device_capability(q.device) >= (8, 0)


def _flash(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """(out [b, h, m, d] float32, lse [b, h, m]) of one flash call, heads of q and k equal."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, causal, False, scale=scale
    )[:2]
    return out.float(), lse[..., : q.shape[2]]


def _flash_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
) -> tuple[Tensor, Tensor]:
    b, hq, w, d = q.shape
    hk, n, dv = k.shape[1], k.shape[2], v.shape[-1]
    g, before = hq // hk, n - w
    if not causal:  # the rectangle alone, over every key
        out, lse = _flash(q.reshape(b, hk, g * w, d), k, v, scale, causal=False)
        return out.reshape(b, hq, w, dv), lse.reshape(b, hq, w)
    # the tail's own keys, causal; a square, so either causal alignment is right, and its
    # w keys are cheap to repeat for the query heads they serve
    k_own, v_own = k[:, :, before:], v[:, :, before:]
    if g > 1:
        k_own, v_own = k_own.repeat_interleave(g, 1), v_own.repeat_interleave(g, 1)
    out_own, lse_own = _flash(q, k_own, v_own, scale, causal=True)
    if before == 0:
        return out_own, lse_own
    # every tail row sees every key before the tail: the g query heads of a key head
    # stack as g * w rows against that head's keys (views, no copies)
    out_rect, lse_rect = _flash(
        q.reshape(b, hk, g * w, d), k[:, :, :before], v[:, :, :before], scale, causal=False
    )
    return merge_by_lse(
        out_rect.reshape(b, hq, w, dv), lse_rect.reshape(b, hq, w), out_own, lse_own
    )
