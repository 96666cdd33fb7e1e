"""HyPE in a transformers model whose attention calls `ALL_ATTENTION_FUNCTIONS`.

`apply_hype(model, config)` gives every attention module a `HyPE` child (mu, tau per
head; parameters when `learnable`) and routes attention through
`hf_hyper_hype+<previous>`, which adds the HyPE bias inside the fused kernel:
- `replace_rope=False`: the bias is added on top of the model's own position encoding;
- `replace_rope=True`: the rotary module returns cos = 1, sin = 0, so RoPE becomes the
  identity and HyPE is the model's only position encoding (training from scratch),
  without touching the model's code.
The settings go into `config.hf_hyper_hype`, the HyPE tensors into the state dict, so
`save_pretrained` keeps both and `load_hype_model` restores them.
`hf_hyper.patch` on such a model runs HyperAttention with the HyPE bias (its columns
appended to q and k, hashed on the original ones) in the patched layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_hyper.hype import HyPE, HyPEConfig

from .common import (
    CONFIG_ATTR,
    HYPE_PREFIX,
    decoder_layers,
    is_causal_call,
    is_unpadded,
    key_ranges_from_mask,
    previous_attention_function,
)

PREFIX = HYPE_PREFIX
CHILD = "hf_hyper_hype"
CONFIG_KEY = "hf_hyper_hype"


class NoRotary(nn.Module):
    """Stands in for a rotary-embedding module: cos = 1, sin = 0, i.e. no rotation."""

    def __init__(self, head_dim: int, original: nn.Module) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.original = [original]  # kept out of the module tree (and the state dict)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        shape = (*position_ids.shape, self.head_dim)
        return torch.ones(shape, dtype=x.dtype, device=x.device), torch.zeros(
            shape, dtype=x.dtype, device=x.device
        )


def _attention(previous: str):
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
        hype: HyPE | None = getattr(module, CHILD, None)
        if hype is None:
            fn = previous_attention_function(module, previous)
            return fn(module, query, key, value, attention_mask, dropout=dropout,
                      scaling=scaling, **kw)  # fmt: skip
        if dropout and module.training:
            raise ValueError("HyPE attention has no dropout; set the model's attention_dropout=0")
        if kw.get("sliding_window") or kw.get("softcap"):
            raise ValueError("HyPE does not combine with sliding windows or logit soft-capping")
        n_query, n_key = query.shape[2], key.shape[2]
        causal = is_causal_call(module, kw)
        ranges = key_ranges_from_mask(attention_mask, n_query, n_key, causal)
        if not is_unpadded(ranges, n_key):
            raise ValueError(
                "HyPE attention takes unpadded batches (its positions are the token indices); "
                "run sequences of different lengths one at a time"
            )
        # hf_hyper.patch tags layers with a HyperAttention config: HyPE runs inside it there
        config = getattr(module, CONFIG_ATTR, None)
        if config is not None and not config.runs_exact(n_query, causal):
            out = hype(query, key, value, causal=causal, scale=scaling, kernel="hyper",
                       hyper_config=config)  # fmt: skip
        else:
            out = hype(query, key, value, causal=causal, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    return attention


def _register(previous: str) -> str:
    name = PREFIX + previous
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _attention(previous))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[previous])
    return name


def _rotary_owner(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(getattr(module, "rotary_emb", None), nn.Module):
            return module
    raise ValueError(f"{type(model).__name__} has no rotary_emb module to replace")


def apply_hype(model: nn.Module, config: HyPEConfig, replace_rope: bool = False) -> nn.Module:
    """Add HyPE to every attention layer of `model` (in place; returns the model)."""
    if not isinstance(config, HyPEConfig):
        raise TypeError(f"config must be a HyPEConfig; got {type(config).__name__}")
    if getattr(model.config, CONFIG_KEY, None):
        raise RuntimeError("model already has HyPE; remove_hype(model) first")
    previous = model.config._attn_implementation
    if previous is None or previous.startswith(("hf_hyper", PREFIX)):
        raise ValueError(f"apply HyPE to an unpatched model; attention is {previous!r}")
    layers = decoder_layers(model)
    heads = model.config.num_attention_heads
    param = next(model.parameters())
    for layer in layers:
        hype = HyPE(config, heads).to(param.device)
        layer.self_attn.add_module(CHILD, hype)
    if replace_rope:
        owner = _rotary_owner(model)
        head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // heads
        owner.rotary_emb = NoRotary(head_dim, owner.rotary_emb)
    model.set_attn_implementation(_register(previous))
    setattr(model.config, CONFIG_KEY, {**asdict(config), "replace_rope": replace_rope,
                                       "previous_attn_implementation": previous})  # fmt: skip
    return model


def remove_hype(model: nn.Module) -> None:
    """Undo `apply_hype`: the model's own attention and RoPE again."""
    spec = getattr(model.config, CONFIG_KEY, None)
    if not spec:
        raise RuntimeError("model has no HyPE to remove")
    if getattr(model, "_hf_hyper_patch", None) is not None:
        raise RuntimeError("model is patched with HyperAttention; hf_hyper.unpatch it first")
    for layer in decoder_layers(model):
        delattr(layer.self_attn, CHILD)
    if spec["replace_rope"]:
        owner = _rotary_owner(model)
        owner.rotary_emb = owner.rotary_emb.original[0]
    model.set_attn_implementation(spec["previous_attn_implementation"])
    delattr(model.config, CONFIG_KEY)


def _config_from(spec: dict) -> tuple[HyPEConfig, bool]:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()
              if k in HyPEConfig.__dataclass_fields__}  # fmt: skip
    return HyPEConfig(**fields), bool(spec["replace_rope"])


def load_hype_model(path: str | Path, **from_pretrained_kwargs) -> nn.Module:
    """`from_pretrained` for a checkpoint saved after `apply_hype`: HyPE settings from
    config.json, its mu / tau from the safetensors weights."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    spec = getattr(AutoConfig.from_pretrained(path), CONFIG_KEY, None)
    if not spec:
        raise ValueError(f"{path} was not saved with HyPE (no {CONFIG_KEY} in config.json)")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its report would call mu / tau "unexpected": loaded below
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=spec["previous_attn_implementation"], **from_pretrained_kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)  # re-applied below
    config, replace_rope = _config_from(spec)
    apply_hype(model, config, replace_rope=replace_rope)
    index = path / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else ["model.safetensors"])  # fmt: skip
    tensors = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            names = [k for k in f.keys() if f".{CHILD}." in k]  # noqa: SIM118 (no __iter__)
            tensors.update({k: f.get_tensor(k) for k in names})
    expected = {k for k in model.state_dict() if f".{CHILD}." in k}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        raise ValueError(f"{path}: HyPE tensors missing from the weights (e.g. {missing})")
    model.load_state_dict(tensors, strict=False)
    return model
