"""The public attention functions: input checks, then the torch path, the fused kernels
or (short exact calls) PyTorch's own fused attention.

Public tensors are `[batch, heads, seq, head_dim]`; key/value heads may be fewer than
query heads (GQA/MQA) and the key head_dim may differ from the value head_dim.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .exact_tail import exact_tail_attention
from .finders import finder_of_call
from .fused import fused_hyper_attention, fused_unsupported_reason
from .planning import Randomness
from .torch_backend import torch_hyper_attention

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _use_fused(q: Tensor, k: Tensor, v: Tensor, config: HyperAttentionConfig) -> bool:
    if not config.allows_kernels:
        return False
    reason = fused_unsupported_reason(q, k, v)
    if reason is not None and config.backend == "triton":
        raise ValueError(f"HyperAttentionConfig(backend='triton'): {reason}")
    # per-query clusters have no fused backward: calls that need gradients run the
    # torch path (their parts in torch ops)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return reason is None and not (config.finder == "clusters" and needs_grad)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """One clear error for inputs no path can run (raised before any work)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"hyper_attention expects {name} as [batch, heads, seq, head_dim]; "
                f"got {t.dim()} dims with shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"hyper_attention supports fp16/bf16/fp32/fp64; {name} is {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree in batch, heads and seq; got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must agree in batch and head_dim; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(
            f"causal attention needs n_query <= n_key (queries are the last rows of the keys); "
            f"got n_query={q.shape[2]}, n_key={k.shape[2]}"
        )
    if k.shape[2] == 0 or q.shape[2] == 0:
        raise ValueError("hyper_attention needs at least one query and one key")


def hyper_attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    generator: torch.Generator | None = None,
    hash_dims: int | None = None,
) -> tuple[Tensor, Tensor]:
    """HyperAttention returning (out [b, hq, nq, dv] in q's dtype, lse [b, hq, nq] float32+).

    q [b, hq, nq, d], k [b, hk, nk, d], v [b, hk, nk, dv] with hq a multiple of hk.
    causal: queries are the last nq positions of the nk keys (prefill with a cache offset
    when nq < nk). generator (or config.seed) makes hyperplanes and samples reproducible.
    hash_dims: the LSH sees only the first hash_dims features of q and k (e.g. not the
    columns a position bias appended); None = all.
    """
    out, lse = _hyper_attention(q, k, v, causal, scale, config, generator, hash_dims, True)
    assert lse is not None
    return out, lse


def _hyper_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None,
    config: HyperAttentionConfig | None, generator: torch.Generator | None,
    hash_dims: int | None, need_lse: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """`hyper_attention_with_lse`; need_lse=False lets the fused forward skip the
    log-sum-exp where nothing merges into it (it may then return None for it)."""
    config = config or HyperAttentionConfig()
    check_inputs(q, k, v, causal)
    if q.shape[2] > config.min_seq_len and config.runs_exact(q.shape[2], causal):
        # short enough to run exact by exact_up_to: below min_seq_len, so every path
        # (fused, torch) takes its exact branch
        config = replace(config, min_seq_len=q.shape[2])
    tail = config.exact_tail if causal and q.shape[2] > config.min_seq_len else 0
    if tail >= q.shape[2]:
        config = replace(config, min_seq_len=q.shape[2])  # every row is in the tail
    elif tail:
        return _with_exact_tail(q, k, v, scale, config, generator, hash_dims, need_lse)
    hash_dims = q.shape[-1] if hash_dims is None else int(hash_dims)
    if not 0 < hash_dims <= q.shape[-1]:
        raise ValueError(f"hash_dims must be in 1..{q.shape[-1]}; got {hash_dims}")
    seed = None
    if generator is None and config.seed is not None:
        # on the inputs' device: drawing on the CPU and copying over would stall the GPU
        generator = torch.Generator(device=q.device).manual_seed(config.seed)
        seed = config.seed
    rng = Randomness(generator, q.device, seed)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)

    if _use_fused(q, k, v, config):
        return fused_hyper_attention(
            q, k, v, causal=causal, scale=scale, config=config, rng=rng,
            finder_of_planes=partial(finder_of_call, config, hash_dims=hash_dims, scale=scale),
            hash_dims=hash_dims, need_lse=need_lse,
        )  # fmt: skip
    return torch_hyper_attention(
        q, k, v, causal=causal, scale=scale, config=config, rng=rng, hash_dims=hash_dims
    )


def _with_exact_tail(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None, config: HyperAttentionConfig,
    generator: torch.Generator | None, hash_dims: int | None, need_lse: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """A causal call whose last config.exact_tail queries attend exactly. The call runs as
    configured, every row, and its last rows are then replaced: the rows before the tail
    are bit for bit those of the call without a tail, and the call keeps its shape (its
    recursion, its CUDA graphs); the tail rows' approximate values are W rows of work."""
    tail = config.exact_tail
    out, lse = _hyper_attention(
        q, k, v, True, scale, replace(config, exact_tail=0), generator, hash_dims, need_lse
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out_tail, lse_tail = exact_tail_attention(q[:, :, -tail:], k, v, scale)
    if out.requires_grad and torch.is_grad_enabled():  # autograd: no in-place writes
        out = torch.cat([out[:, :, :-tail], out_tail.to(out.dtype)], dim=2)
        if lse is not None:
            lse = torch.cat([lse[:, :, :-tail], lse_tail.to(lse.dtype)], dim=2)
        return out, lse
    # the output is the call's own (a graph replay's is cloned out): overwrite in place,
    # which spares a copy of the whole output
    out[:, :, -tail:] = out_tail
    if lse is not None:
        lse[:, :, -tail:] = lse_tail
    return out, lse


def _exact_by_sdpa(q: Tensor, k: Tensor, causal: bool, config: HyperAttentionConfig) -> bool:
    """Whether the call is exact by its length and SDPA's mask means the same: its
    causal mask is aligned top-left, so only n_query == n_key (no cached prefix)."""
    if config.backend != "auto" or q.dim() != 4 or k.dim() != 4:
        return False  # a named backend runs (or refuses) every call itself
    n_query = q.shape[2]
    return config.runs_exact(n_query, causal) and (not causal or n_query == k.shape[2])


def hyper_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    generator: torch.Generator | None = None,
    hash_dims: int | None = None,
) -> Tensor:
    """HyperAttention output [b, hq, nq, dv]; see `hyper_attention_with_lse`.

    With backend "auto", calls short enough to be exact (`config.exact_query_len`) go
    straight to PyTorch's fused attention (no log-sum-exp is asked for here, so none is
    computed): the same exact result without this module's per-call work.
    """
    config = config or HyperAttentionConfig()
    if _exact_by_sdpa(q, k, causal, config):
        check_inputs(q, k, v, causal)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    out, _ = _hyper_attention(q, k, v, causal, scale, config, generator, hash_dims, False)
    return out
