"""Helpers shared by the adapters: the attributes they tag modules with, the attention
functions they hand calls back to, and what an attention mask means for HyperAttention
(which key ranges each sequence sees, and running a padded batch one sequence at a
time)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_hyper.attention import future_key_mask, hyper_attention
from hf_hyper.config import HyperAttentionConfig

# Attention functions registered for patched layers are named PREFIX + previous; HyPE
# models' own attention functions HYPE_PREFIX + previous. Patched attention modules carry
# their HyperAttention config in CONFIG_ATTR, observed ones their observer in OBSERVER_ATTR.
PREFIX = "hf_hyper+"
HYPE_PREFIX = "hf_hyper_hype+"
CONFIG_ATTR = "hf_hyper_config"
OBSERVER_ATTR = "hf_hyper_observer"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers (each with a `.self_attn`)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and hasattr(module[0], "self_attn"):
            return module
    raise ValueError(f"{type(model).__name__} has no list of decoder layers with `.self_attn`")


def previous_attention_function(module: nn.Module, previous: str) -> Callable:
    """The attention function a layer used before patching, by its registered name."""
    if previous == "eager":
        # every modeling file defines its own eager function next to its attention class
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(previous, None)


def is_causal_call(module: nn.Module, kwargs: dict) -> bool:
    """Whether transformers asked this attention call to be causal."""
    causal = kwargs.get("is_causal")
    return getattr(module, "is_causal", True) if causal is None else bool(causal)


def key_ranges_from_mask(
    mask: torch.Tensor | None, n_query: int, n_key: int, causal: bool
) -> list[tuple[int, int]] | None:
    """None if there is no padding; else one contiguous valid key range per sequence.

    Accepts the forms transformers hands to attention functions: None (plain causal),
    a 2D padding mask [b, n_key] (flash style), or a 4D mask [b, 1, n_query, n_key],
    boolean (True = attend) or additive float (0 = attend). A mask that is not causal
    (or full) attention over one contiguous range per sequence — sliding windows,
    packed sequences, custom patterns — is refused with an error, never approximated.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        valid = mask.bool()
    elif mask.dim() == 4:
        allowed = mask if mask.dtype == torch.bool else mask == 0
        allowed = allowed[:, 0]
        valid = allowed.any(dim=1)  # [b, n_key]
        _check_pattern(allowed, valid, n_query, n_key, causal)
    else:
        raise ValueError(f"unsupported attention mask shape {tuple(mask.shape)}")
    ranges = []
    for row in valid:
        idx = torch.nonzero(row).flatten()
        if idx.numel() == 0:
            ranges.append((0, 0))
            continue
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if stop - start != idx.numel():
            raise ValueError(
                "HyperAttention needs each sequence's valid tokens to be contiguous (left or "
                "right padding); this mask has holes"
            )
        ranges.append((start, stop))
    return ranges


def is_unpadded(ranges: list[tuple[int, int]] | None, n_key: int) -> bool:
    """True if `key_ranges_from_mask` found every sequence seeing all n_key keys."""
    return ranges is None or all(r == (0, n_key) for r in ranges)


def _check_pattern(allowed, valid, n_query: int, n_key: int, causal: bool) -> None:
    offset = n_key - n_query
    expected = valid[:, None, :].expand(-1, n_query, -1)
    if causal:
        expected = expected & ~future_key_mask(n_query, n_key, allowed.device)
    # only rows of real (non-padding) queries carry meaning
    real_rows = valid[:, offset:]
    if bool(((allowed != expected) & real_rows[:, :, None]).any()):
        raise ValueError(
            "this layer's attention mask is not causal attention with left/right padding "
            "(sliding window, packed sequences or a custom mask?); HyperAttention cannot "
            "honour it — patch only full causal-attention layers"
        )


def attention_per_sequence(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    ranges: list[tuple[int, int]],
    causal: bool,
    scale: float | None,
    config: HyperAttentionConfig,
) -> torch.Tensor:
    """Padded batch [b, h, n, d]: each sequence runs on its own valid keys [start, stop);
    query rows outside the valid range (padding) get zeros."""
    n_query, n_key = query.shape[2], key.shape[2]
    out = query.new_zeros(*query.shape[:3], value.shape[-1])
    for b, (start, stop) in enumerate(ranges):
        q_start = max(start - (n_key - n_query), 0) if causal else 0
        q_stop = stop - (n_key - n_query) if causal else n_query
        if q_stop <= q_start:
            continue
        out[b : b + 1, :, q_start:q_stop] = hyper_attention(
            query[b : b + 1, :, q_start:q_stop],
            key[b : b + 1, :, start:stop],
            value[b : b + 1, :, start:stop],
            causal=causal,
            scale=scale,
            config=config,
        )
    return out
