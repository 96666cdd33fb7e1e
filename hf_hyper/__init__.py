"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models."""

from .attention import hyper_attention, hyper_attention_with_lse
from .config import HyperAttentionConfig
from .patching import PatchReport, patch, patch_report, supported_model_types, unpatch

__version__ = "0.1.0"

__all__ = [
    "HyperAttentionConfig",
    "PatchReport",
    "hyper_attention",
    "hyper_attention_with_lse",
    "patch",
    "patch_report",
    "supported_model_types",
    "unpatch",
]
