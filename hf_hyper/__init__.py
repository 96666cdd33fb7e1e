"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models.

The attention functions and configs load with the package; the model adapters
(`hf_hyper.patches`, which import transformers) load on first use of `patch` and the
other model-level names.
"""

from importlib import import_module as _import_module
from pathlib import Path as _Path

# `patches/` and `eval/` are installed as hf_hyper.patches / hf_hyper.eval. When Python
# imports this package straight from a source checkout (e.g. `python -m hf_hyper.eval.cli`
# run from its root), let the subpackages resolve to those folders there as well.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "patches" / "__init__.py").is_file():
    __path__.append(str(_root))

from .attention import (  # noqa: E402
    AttentionDiagnostics,
    attention_diagnostics,
    hyper_attention,
    hyper_attention_with_lse,
)
from .config import HyperAttentionConfig  # noqa: E402
from .hype import HyPEConfig  # noqa: E402
from .plan import Plan, PlanError  # noqa: E402

# name -> module that defines it, imported when the name is first used
_MODEL_LEVEL = {
    "PatchReport": "hf_hyper.patches.patching",
    "capture_attention": "hf_hyper.patches.patching",
    "patch": "hf_hyper.patches.patching",
    "patch_report": "hf_hyper.patches.patching",
    "unpatch": "hf_hyper.patches.patching",
    "supported_model_types": "hf_hyper.patches.registry",
    "apply_hype": "hf_hyper.patches.hype_models",
    "load_hype_model": "hf_hyper.patches.hype_models",
    "remove_hype": "hf_hyper.patches.hype_models",
    "load_chatglm": "hf_hyper.patches.chatglm_compat",
}


def __getattr__(name: str):
    if name in _MODEL_LEVEL:
        value = getattr(_import_module(_MODEL_LEVEL[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_hyper' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AttentionDiagnostics",
    "HyPEConfig",
    "HyperAttentionConfig",
    "PatchReport",
    "Plan",
    "PlanError",
    "apply_hype",
    "attention_diagnostics",
    "capture_attention",
    "hyper_attention",
    "hyper_attention_with_lse",
    "load_chatglm",
    "load_hype_model",
    "patch",
    "patch_report",
    "remove_hype",
    "supported_model_types",
    "unpatch",
]
