"""Tiny randomly initialised models of each supported family (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {"sliding_window": None, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gemma": {"head_dim": 16},
}


def tiny_model(model_type: str, attn_implementation: str = "sdpa", seed: int = 0, **overrides):
    config = AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()
