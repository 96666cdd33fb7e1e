"""Adapter for models whose attention calls transformers' `ALL_ATTENTION_FUNCTIONS`
(Llama 2/3, Mistral, Mixtral, Qwen2/3, Phi-3, Gemma, ...).

Patching registers one attention function and one mask function per previous
implementation, under the name `hf_hyper+<previous>`. The mask function is the previous
one, so every layer receives exactly the mask it always did; the attention function
runs HyperAttention on layers that carry a config and hands everything else (other
layers, decoding steps, short inputs) to the previous implementation unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_hyper.attention import hyper_attention
from hf_hyper.config import HyperAttentionConfig

from .common import (
    CONFIG_ATTR,
    HYPE_PREFIX,
    OBSERVER_ATTR,
    PREFIX,
    attention_per_sequence,
    decoder_layers,
    is_causal_call,
    is_unpadded,
    key_ranges_from_mask,
    previous_attention_function,
)

MODEL_TYPES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi3",
    "gemma",
    "gemma2",
    "granite",
    "olmo2",
)


def _check_layer_supported(module: nn.Module, n_key: int, kwargs: dict) -> None:
    window = kwargs.get("sliding_window")
    if window and n_key > window:
        raise ValueError(
            f"layer {module.layer_idx} uses sliding-window attention ({window} tokens) and the "
            f"input has {n_key}; HyperAttention does not implement windows: patch only "
            "full-attention layers (layers=[...])"
        )
    if kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None):
        raise ValueError(
            f"layer {module.layer_idx} uses attention logit soft-capping, which HyperAttention "
            "does not implement; set config.attn_logit_softcapping=None or do not patch it"
        )


def _make_attention_function(previous: str) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        config: HyperAttentionConfig | None = getattr(module, CONFIG_ATTR, None)
        observer = getattr(module, OBSERVER_ATTR, None)
        if observer is not None:
            _observe(observer, module, query, key, value, attention_mask, scaling, kwargs)
        causal = is_causal_call(module, kwargs)
        if config is None or config.runs_exact(query.shape[2], causal):
            # not patched, a decoding step, or short enough to be exact anyway
            fn = previous_attention_function(module, previous)
            return fn(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
        _check_layer_supported(module, key.shape[2], kwargs)
        if dropout:
            raise ValueError(
                "HyperAttention has no attention dropout; set the model's attention_dropout=0"
            )
        ranges = key_ranges_from_mask(attention_mask, query.shape[2], key.shape[2], causal)
        if ranges is None:
            out = hyper_attention(query, key, value, causal=causal, scale=scaling, config=config)
        else:
            out = attention_per_sequence(query, key, value, ranges, causal, scaling, config)
        return out.transpose(1, 2).contiguous(), None  # [b, h, n, d] -> [b, n, h, d]

    return attention


def _observe(observer, module, query, key, value, attention_mask, scaling, kwargs) -> None:
    causal = is_causal_call(module, kwargs)
    ranges = key_ranges_from_mask(attention_mask, query.shape[2], key.shape[2], causal)
    if not is_unpadded(ranges, key.shape[2]):
        raise ValueError("capture_attention needs unpadded inputs; this batch has padding")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    observer(module.layer_idx, query, key, value, causal=causal, scale=scale)


def _register(previous: str) -> str:
    name = PREFIX + previous
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_attention_function(previous))
        mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(previous)
        if mask is None:
            raise ValueError(f"no attention-mask function is registered for {previous!r}")
        # Without this entry transformers would silently build no mask (padding lost).
        AttentionMaskInterface.register(name, mask)
    return name


class AttentionInterfaceAdapter:
    """Patches the selected layers by tagging their attention modules with a config."""

    name = "attention-interface"

    def num_layers(self, model: PreTrainedModel) -> int:
        return len(decoder_layers(model))

    def check(self, model: PreTrainedModel) -> None:
        previous = model.config._attn_implementation
        if previous is None or previous.startswith(PREFIX):
            raise ValueError(f"unexpected attention implementation {previous!r}")

    def patch(self, model: PreTrainedModel, configs: Mapping[int, HyperAttentionConfig]) -> dict:
        previous = model.config._attn_implementation
        # A HyPE model's attention function runs HyperAttention itself (bias included) in
        # the layers that carry a config; other models get the hf_hyper+ function.
        name = previous if previous.startswith(HYPE_PREFIX) else _register(previous)
        modules = decoder_layers(model)
        for i in configs:
            if getattr(modules[i].self_attn, "attn_logit_softcapping", None):
                raise ValueError(
                    f"layer {i} uses attention logit soft-capping, which HyperAttention does not "
                    "implement; load the model with attn_logit_softcapping=None or skip the layer"
                )
        for i, config in configs.items():
            setattr(modules[i].self_attn, CONFIG_ATTR, config)
        model.set_attn_implementation(name)
        return {"previous_attn_implementation": previous, "attn_implementation": name}

    def unpatch(self, model: PreTrainedModel, state: dict) -> None:
        for layer in decoder_layers(model):
            for attr in (CONFIG_ATTR, OBSERVER_ATTR):
                if hasattr(layer.self_attn, attr):
                    delattr(layer.self_attn, attr)
        model.set_attn_implementation(state["previous_attn_implementation"])

    def observe(self, model: PreTrainedModel, layers: list[int], observer) -> dict:
        """Hand each chosen layer's q, k, v to `observer`; attention itself is unchanged."""
        previous = model.config._attn_implementation
        if previous.startswith(HYPE_PREFIX):
            raise ValueError(
                "capture_attention sees q and k without the HyPE bias, so its measurements "
                "would not be of this model's attention; remove_hype first or measure without"
            )
        name = _register(previous)
        modules = decoder_layers(model)
        for i in layers:
            setattr(modules[i].self_attn, OBSERVER_ATTR, observer)
        model.set_attn_implementation(name)
        return {"previous_attn_implementation": previous, "attn_implementation": name}


def full_attention_layers(model: PreTrainedModel) -> set[int] | None:
    """Layers the config marks as full (global) attention; None if it marks none."""
    layer_types = getattr(model.config, "layer_types", None)
    if not layer_types:
        return None
    return {i for i, kind in enumerate(layer_types) if kind == "full_attention"}


class FullAttentionLayersAdapter(AttentionInterfaceAdapter):
    """For models that interleave sliding-window and full attention layers (Gemma 3):
    only the chosen full-attention layers are patched; the sliding-window ones stay
    exact (HyperAttention has no windows) and the report lists them as skipped."""

    name = "attention-interface (full-attention layers)"

    def patch(self, model: PreTrainedModel, configs: Mapping[int, HyperAttentionConfig]) -> dict:
        full = full_attention_layers(model)
        keep = {i: c for i, c in configs.items() if full is None or i in full}
        skipped = {i: "sliding-window attention" for i in configs if i not in keep}
        if not keep:
            raise ValueError(
                f"none of layers {list(configs)} is a full-attention layer; this model's are "
                f"{sorted(full or [])}: choose among them (layers=[...]) or patch more layers"
            )
        state = super().patch(model, keep)
        return state | {"skipped_layers": skipped}

    def observe(self, model: PreTrainedModel, layers: list[int], observer) -> dict:
        """Only the full-attention layers: the sliding-window ones are never patched, so
        there is nothing to measure there."""
        full = full_attention_layers(model)
        keep = [i for i in layers if full is None or i in full]
        if not keep:
            raise ValueError(
                f"none of layers {layers} is a full-attention layer; this model's are "
                f"{sorted(full or [])}: choose among them"
            )
        return super().observe(model, keep, observer) | {"observed_layers": keep}
