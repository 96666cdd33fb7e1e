"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models.

The attention functions and configs load with the package; the model adapters
(`hf_hyper.patches`, which import transformers) load on first use of `patch` and the
other model-level names.
"""

import sys as _sys
from importlib import import_module as _import_module
from importlib.abc import MetaPathFinder as _MetaPathFinder
from importlib.util import spec_from_file_location as _spec_from_file_location
from pathlib import Path as _Path


class _CheckoutSubpackages(_MetaPathFinder):
    """`patches/` and `eval/` are installed as hf_hyper.patches / hf_hyper.eval. When
    Python imports this package straight from a source checkout (`python -m
    hf_hyper.eval.cli` run from its root, not installed), this finder maps those two names,
    and only those, to their folders: nothing else in the checkout imports as hf_hyper."""

    def __init__(self, root: _Path) -> None:
        self.folders = {f"{__name__}.{name}": root / name for name in ("patches", "eval")}

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return _spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "patches" / "__init__.py").is_file():
    _sys.meta_path.append(_CheckoutSubpackages(_root))

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
