"""Adapter for ChatGLM2-6B / ChatGLM2-6B-32k (and ChatGLM3), which ship as remote code.

Their attention does not go through transformers' registry: each layer's
`transformer.encoder.layers[i].self_attention.core_attention` receives rotated queries
and keys with the multi-query groups already expanded to every head. Patching gives the
selected `core_attention` modules an instance-level `forward`; unpatching deletes it, so
the class's own forward is back untouched.

Two published layouts exist and are detected per module:
- seq-first (ChatGLM2's original code): q, k, v [sq, b, heads, d] -> output [sq, b, h*d]
- batch-first (later revisions, with `is_causal` and CORE_ATTENTION_CLASSES):
  q, k, v [b, heads, sq, d] -> output [b, sq, h*d]
A call whose shapes fit neither is an error naming both, never a guess.

ChatGLM's mask is boolean with True = masked, None for plain causal prefill, and lets
padding query rows see every key (so no softmax row is empty); it is read back into
per-sequence key ranges before HyperAttention runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import torch
from torch import nn

from hf_hyper.attention import future_key_mask, hyper_attention
from hf_hyper.config import HyperAttentionConfig

from .chatglm_compat import fix_generation, remove_generation_fixes
from .common import attention_per_sequence, is_unpadded, key_ranges_from_mask

MODEL_TYPES = ("chatglm",)
SEQ_FIRST, BATCH_FIRST = "seq-first", "batch-first"


def glm_layers(model: nn.Module) -> nn.ModuleList:
    try:
        layers = model.transformer.encoder.layers
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} is not a ChatGLM2/3 model: no transformer.encoder.layers"
        ) from None
    if not all(hasattr(layer.self_attention, "core_attention") for layer in layers):
        raise ValueError("ChatGLM layers without self_attention.core_attention: unknown version")
    return layers


def detect_layout(core: nn.Module) -> str:
    """Later revisions added `is_causal` and a table of core-attention classes together
    with the switch to batch-first tensors."""
    module = sys.modules.get(type(core).__module__)
    if hasattr(core, "is_causal") or hasattr(module, "CORE_ATTENTION_CLASSES"):
        return BATCH_FIRST
    return SEQ_FIRST


def chatglm_key_ranges(
    mask: torch.Tensor | None, n_query: int, n_key: int
) -> list[tuple[int, int]] | None:
    """ChatGLM's [b, 1, sq, sk] mask (True = masked) as valid key ranges (None: no padding).

    Without a cache ChatGLM builds `causal & key_valid`, then opens padding query rows
    completely. A real row never sees the key after it, so the padding mask is read off
    that diagonal; the last row (nothing after it) takes its neighbour's value, which only
    matters for a padding row whose output is discarded anyway. The mask must equal what
    ChatGLM would build from that padding mask; anything else is refused.
    """
    if mask is None:
        return None
    if mask.dim() != 4 or mask.dtype != torch.bool:
        raise ValueError(
            f"expected ChatGLM's boolean [b, 1, sq, sk] mask; got {mask.dtype} {tuple(mask.shape)}"
        )
    allowed = ~mask[:, 0]
    if n_query != n_key:  # with a cache ChatGLM does not open padding rows
        return key_ranges_from_mask(allowed[:, None], n_query, n_key, causal=True)
    sees_next = allowed.diagonal(offset=1, dim1=1, dim2=2)  # [b, n - 1]: row i sees key i+1
    valid = torch.cat([~sees_next, ~sees_next[:, -1:]], dim=1) if n_key > 1 else allowed[:, 0]
    causal = ~future_key_mask(n_query, n_key, mask.device)
    rebuilt = causal[None] & valid[:, None, :]
    rebuilt |= ~valid[:, :, None]  # padding rows see everything
    if not torch.equal(rebuilt, allowed):
        raise ValueError(
            "this ChatGLM attention mask is not causal attention with left/right padding; "
            "HyperAttention cannot honour it"
        )
    return key_ranges_from_mask(valid, n_query, n_key, causal=True)


def _to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.permute(1, 2, 0, 3) if layout == SEQ_FIRST else x  # [sq, b, h, d] -> [b, h, sq, d]


def _check_shapes(core: nn.Module, layout: str, q: torch.Tensor) -> None:
    heads, dim = core.num_attention_heads_per_partition, core.hidden_size_per_attention_head
    head_axis = 2 if layout == SEQ_FIRST else 1
    if q.dim() != 4 or q.shape[head_axis] != heads or q.shape[3] != dim:
        raise RuntimeError(
            f"ChatGLM core attention got a query of shape {tuple(q.shape)}; the {layout} "
            f"layout detected for this remote code expects heads={heads} on axis {head_axis} "
            f"and head_dim={dim} last ({SEQ_FIRST}: [sq, b, h, d], {BATCH_FIRST}: "
            "[b, h, sq, d]). This revision of the remote code is not supported."
        )


def _make_forward(core: nn.Module, config: HyperAttentionConfig, layout: str):
    original = type(core).forward.__get__(core)

    def forward(query_layer, key_layer, value_layer, attention_mask):
        _check_shapes(core, layout, query_layer)
        q, k, v = (_to_bhnd(t, layout) for t in (query_layer, key_layer, value_layer))
        n_query, n_key = q.shape[2], k.shape[2]
        if config.runs_exact(n_query, True):  # decoding steps, short inputs: exact
            return original(query_layer, key_layer, value_layer, attention_mask)
        if core.training and core.attention_dropout.p:
            raise ValueError("HyperAttention has no attention dropout; set attention_dropout=0")
        scale = 1.0 / math.sqrt(q.shape[-1])  # ChatGLM's layer-number coefficient cancels
        ranges = chatglm_key_ranges(attention_mask, n_query, n_key)
        if ranges is None:
            out = hyper_attention(q, k, v, causal=True, scale=scale, config=config)
        else:
            out = attention_per_sequence(q, k, v, ranges, True, scale, config)
        b, h, n, d = out.shape
        if layout == SEQ_FIRST:
            return out.permute(2, 0, 1, 3).reshape(n, b, h * d)  # [sq, b, h*d]
        return out.transpose(1, 2).reshape(b, n, h * d)  # [b, sq, h*d]

    return forward


def _make_observing_forward(core: nn.Module, layer: int, observer, layout: str):
    original = type(core).forward.__get__(core)

    def forward(query_layer, key_layer, value_layer, attention_mask):
        _check_shapes(core, layout, query_layer)
        q, k, v = (_to_bhnd(t, layout) for t in (query_layer, key_layer, value_layer))
        ranges = chatglm_key_ranges(attention_mask, q.shape[2], k.shape[2])
        if not is_unpadded(ranges, k.shape[2]):
            raise ValueError("capture_attention needs unpadded inputs; this batch has padding")
        observer(layer, q, k, v, causal=True, scale=1.0 / math.sqrt(q.shape[-1]))
        return original(query_layer, key_layer, value_layer, attention_mask)

    return forward


class ChatGLMAdapter:
    """Forward replacement of the selected layers' core attention."""

    name = "chatglm-core-attention"

    def num_layers(self, model: nn.Module) -> int:
        return len(glm_layers(model))

    def check(self, model: nn.Module) -> None:
        for i, layer in enumerate(glm_layers(model)):
            if "forward" in vars(layer.self_attention.core_attention):
                raise ValueError(f"layer {i}'s core attention already has a replaced forward")

    def patch(self, model: nn.Module, configs: Mapping[int, HyperAttentionConfig]) -> dict:
        modules = glm_layers(model)
        layouts = {}
        for i, config in configs.items():
            core = modules[i].self_attention.core_attention
            layouts[i] = detect_layout(core)
            core.forward = _make_forward(core, config, layouts[i])
        compat = fix_generation(model)  # remote code on transformers 5; [] if not needed
        return {"layout": sorted(set(layouts.values())), "compat": compat}

    def observe(self, model: nn.Module, layers: list[int], observer) -> dict:
        """Hand each chosen layer's q, k, v to `observer`; attention itself is unchanged."""
        modules = glm_layers(model)
        for i in layers:
            core = modules[i].self_attention.core_attention
            core.forward = _make_observing_forward(core, i, observer, detect_layout(core))
        return {"compat": []}  # forward passes only: no generation fixes to install

    def unpatch(self, model: nn.Module, state: dict) -> None:
        for layer in glm_layers(model):
            vars(layer.self_attention.core_attention).pop("forward", None)
        if state.get("compat"):
            remove_generation_fixes(model)
