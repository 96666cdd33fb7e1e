"""The adapter registry: which adapter patches which `config.model_type`, and the
contract every adapter keeps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import nn

from hf_hyper.config import HyperAttentionConfig

from .attention_interface import MODEL_TYPES as INTERFACE_MODEL_TYPES
from .attention_interface import AttentionInterfaceAdapter, FullAttentionLayersAdapter
from .chatglm import MODEL_TYPES as CHATGLM_MODEL_TYPES
from .chatglm import ChatGLMAdapter

# observer(layer, q, k, v, *, causal, scale): q [b, hq, n, d], k and v [b, hk, n, d]
AttentionObserver = Callable[..., None]


@runtime_checkable
class Adapter(Protocol):
    """How hf_hyper patches one model family. `patch` and `observe` return the state
    `unpatch` needs to undo them exactly; `check` raises ValueError, before anything is
    changed, for a model this adapter cannot patch."""

    name: str

    def num_layers(self, model: nn.Module) -> int: ...

    def check(self, model: nn.Module) -> None: ...

    def patch(self, model: nn.Module, configs: Mapping[int, HyperAttentionConfig]) -> dict: ...

    def observe(self, model: nn.Module, layers: list[int], observer: AttentionObserver) -> dict: ...

    def unpatch(self, model: nn.Module, state: dict) -> None: ...


ADAPTERS: dict[str, Adapter] = {t: AttentionInterfaceAdapter() for t in INTERFACE_MODEL_TYPES}
ADAPTERS.update({t: ChatGLMAdapter() for t in CHATGLM_MODEL_TYPES})
# sliding-window and full attention interleaved: only the full layers are patched
ADAPTERS.update({t: FullAttentionLayersAdapter() for t in ("gemma3_text",)})
# Remote-code config classes whose `model_type` may be empty, by class name.
CONFIG_CLASS_TYPES: dict[str, str] = {"ChatGLMConfig": "chatglm"}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def model_type_of(config: Any) -> str | None:
    """A config's model_type; some remote-code configs leave it empty, but their class
    name still says it."""
    return getattr(config, "model_type", None) or CONFIG_CLASS_TYPES.get(type(config).__name__)


def adapter_for(model: nn.Module) -> tuple[str | None, Adapter]:
    """(model_type, adapter) of a loaded model; ValueError naming the supported types."""
    model_type = model_type_of(getattr(model, "config", None))
    if model_type not in ADAPTERS:
        raise ValueError(
            f"hf_hyper has no adapter for model_type={model_type!r}. Supported: "
            f"{', '.join(supported_model_types())}. To add one, write a small class keeping "
            "hf_hyper.patches.registry.Adapter (name, num_layers, check, patch, observe, "
            "unpatch) in hf_hyper/patches/ and register it in "
            "hf_hyper.patches.registry.ADAPTERS."
        )
    return model_type, ADAPTERS[model_type]
