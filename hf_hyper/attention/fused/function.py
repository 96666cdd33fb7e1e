"""The one autograd.Function of the fused path, and the entry the API calls."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...config import HyperAttentionConfig
from ..planning import BlockFinder, QueryFinder, Randomness
from .backward import dense_layout, fused_backward
from .forward import fused_forward
from .graphs import GRAPHS
from .records import ForwardRecord


class FusedHyperAttention(torch.autograd.Function):
    """The fused forward, recorded, with the fused backward of both outputs."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, config, rng, finder_of_planes, hash_dims):
        record = ForwardRecord()
        out, lse = fused_forward(
            q, k, v, causal=causal, scale=scale, config=config, rng=rng,
            finder_of_planes=finder_of_planes, hash_dims=hash_dims, record=record,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.record, ctx.scale = record, scale
        # an output the loss does not use arrives as None, not as a tensor of zeros:
        # a None dlse keeps cuDNN's diagonal backward usable
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        grads = fused_backward(q, k, v, out, lse, dout, ctx.record, ctx.scale, dlse)
        return *grads, None, None, None, None, None, None


def fused_hyper_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float,
    config: HyperAttentionConfig, rng: Randomness,
    finder_of_planes: Callable[[Tensor], BlockFinder | QueryFinder],
    hash_dims: int | None = None,
    need_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """HyperAttention through the fused kernels on validated inputs, the call's block
    finder made by finder_of_planes from its hyperplanes: (out, lse), both
    differentiable where autograd needs them (the fused backward attached). Without
    gradients, need_lse=False lets a call that merges nothing keep no lse (None), and
    calls of at most config.graph_max_len queries replay CUDA graphs (graphs.py)."""
    graphs = q.is_cuda and q.shape[2] <= config.graph_max_len
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        if graphs:
            GRAPHS.stats.fallbacks["autograd: the backward replays the eager plan"] += 1
        q, k, v = (t if dense_layout(t) else t.contiguous() for t in (q, k, v))
        return FusedHyperAttention.apply(
            q, k, v, causal, scale, config, rng, finder_of_planes, hash_dims
        )

    def forward(q: Tensor, k: Tensor, v: Tensor, rng) -> tuple[Tensor, Tensor | None]:
        return fused_forward(
            q, k, v, causal=causal, scale=scale, config=config, rng=rng,
            finder_of_planes=finder_of_planes, hash_dims=hash_dims, need_lse=need_lse,
        )  # fmt: skip

    if not graphs:
        return forward(q, k, v, rng)
    # everything that fixes the launches; the values reach the graph through its buffers
    layout = tuple((t.shape, t.stride(), t.dtype) for t in (q, k, v))
    key = (layout, q.device, causal, scale, config, hash_dims, need_lse, rng.draw_device,
           torch.get_default_dtype())  # fmt: skip
    return GRAPHS.run(key, forward, q, k, v, rng)
