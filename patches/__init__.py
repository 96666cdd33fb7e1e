"""Model adapters, one file per family, keyed by `config.model_type`.

Adding a family: write a class with `num_layers(model)`, `check(model)`,
`patch(model, layers, config) -> state` and `unpatch(model, state)` in a new file here
and map its model types in ADAPTERS.
"""

from __future__ import annotations

from .attention_interface import MODEL_TYPES as _INTERFACE_TYPES
from .attention_interface import AttentionInterfaceAdapter
from .chatglm import MODEL_TYPES as _CHATGLM_TYPES
from .chatglm import ChatGLMAdapter

ADAPTERS: dict[str, object] = {t: AttentionInterfaceAdapter() for t in _INTERFACE_TYPES}
ADAPTERS.update({t: ChatGLMAdapter() for t in _CHATGLM_TYPES})
# Remote-code config classes whose `model_type` may be empty, by class name.
CONFIG_CLASS_TYPES: dict[str, str] = {"ChatGLMConfig": "chatglm"}

__all__ = ["ADAPTERS", "CONFIG_CLASS_TYPES", "AttentionInterfaceAdapter", "ChatGLMAdapter"]
