"""cuDNN's fused attention for the exact diagonal blocks: when it runs, how the blocks
are viewed for it, and its forward and backward calls.

On Hopper it is the fastest exact kernel, so the causal recursion's diagonal blocks (and
short exact calls) go through it where the inputs allow."""

from __future__ import annotations

import torch
from torch import Tensor

from .records import CudnnAux


def cudnn_attention_usable(q: Tensor, v: Tensor) -> bool:
    """Whether cuDNN's fused attention (with its log-sum-exp) can run exact blocks of
    these inputs: Hopper or newer, 16-bit, equal q/v head sizes it supports, and the
    cuDNN SDPA backend not switched off by the user."""
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] != v.shape[-1]:
        return False
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return False
    if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"):
        return False
    if not (torch.backends.cudnn.is_available() and torch.backends.cuda.cudnn_sdp_enabled()):
        return False
    return torch.cuda.get_device_capability(q.device) >= (9, 0)


def diagonal_block_view(x: Tensor, blocks: int) -> Tensor | None:
    """x [b, h, n, d] as a 4-D view of its `blocks` diagonal blocks of n/blocks rows,
    without a copy: [b, h*blocks, n/blocks, d] when heads are outer to sequence
    (contiguous [b, h, n, d]), [b*blocks, h, n/blocks, d] when the sequence is outer
    ([b, n, h, d] storage, the models' layout); None if neither is a view."""
    b, h, n, d = x.shape
    base = n // blocks
    split = x.unflatten(2, (blocks, base))  # [b, h, blocks, base, d]
    heads_outer = ((0, 1, 2, 3, 4), (b, h * blocks, base, d))
    seq_outer = ((0, 2, 1, 3, 4), (b * blocks, h, base, d))
    for dims, shape in (heads_outer, seq_outer):
        try:
            return split.permute(*dims).view(shape)
        except RuntimeError:
            continue
    return None


def cudnn_forward(
    q: Tensor, k: Tensor, v: Tensor, *, need_lse: bool, causal: bool, scale: float
) -> tuple[Tensor, Tensor, CudnnAux]:
    """(out, lse, aux) of cuDNN's fused attention on 4-D views; RuntimeError where this
    cuDNN build rejects the configuration."""
    out, lse, *aux = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, need_lse, 0.0, causal, False, scale=scale
    )
    return out, lse, CudnnAux(*aux[:6])


def cudnn_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    aux: CudnnAux, *, causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of `cudnn_forward`, given the rows' final out and lse. cuDNN forms
    D = rowsum(dO * O) itself, so this is right only where no gradient reaches the lse."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        dout, q, k, v, out, lse, aux.philox_seed, aux.philox_offset, None,
        aux.cum_seq_q, aux.cum_seq_k, aux.max_q, aux.max_k, 0.0, causal, scale=scale,
    )  # fmt: skip
