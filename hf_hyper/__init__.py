"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models."""

from .attention import hyper_attention, hyper_attention_with_lse
from .config import HyperAttentionConfig

__version__ = "0.1.0"

__all__ = ["HyperAttentionConfig", "hyper_attention", "hyper_attention_with_lse"]
