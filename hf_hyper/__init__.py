"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models."""

from pathlib import Path as _Path

# `patches/` and `eval/` are installed as hf_hyper.patches / hf_hyper.eval. When Python
# imports this package straight from a source checkout (e.g. `python -m hf_hyper.cli`
# run from its root), let the subpackages resolve to those folders there as well.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "patches" / "__init__.py").is_file():
    __path__.append(str(_root))

from .attention import hyper_attention, hyper_attention_with_lse  # noqa: E402
from .config import HyperAttentionConfig  # noqa: E402
from .patching import (  # noqa: E402
    PatchReport,
    patch,
    patch_report,
    supported_model_types,
    unpatch,
)

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
