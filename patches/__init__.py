"""Model adapters, one file per family, keyed by `config.model_type` in `registry`.

Adding a family: write a class keeping `registry.Adapter` (name, num_layers, check,
patch, observe, unpatch) in a new file here and map its model types in
`registry.ADAPTERS`. `patching` selects layers and keeps the state that undoes a patch.
"""

from .attention_interface import AttentionInterfaceAdapter
from .chatglm import ChatGLMAdapter
from .patching import PatchReport, capture_attention, patch, patch_report, unpatch
from .registry import ADAPTERS, Adapter, supported_model_types

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AttentionInterfaceAdapter",
    "ChatGLMAdapter",
    "PatchReport",
    "capture_attention",
    "patch",
    "patch_report",
    "supported_model_types",
    "unpatch",
]
