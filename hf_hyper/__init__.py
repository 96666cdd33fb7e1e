"""hf_hyper: HyperAttention and HyPE for pretrained HuggingFace models."""

from pathlib import Path as _Path

# `patches/` and `eval/` are installed as hf_hyper.patches / hf_hyper.eval. When Python
# imports this package straight from a source checkout (e.g. `python -m hf_hyper.cli`
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
from .patching import (  # noqa: E402
    PatchReport,
    capture_attention,
    patch,
    patch_report,
    supported_model_types,
    unpatch,
)


def apply_hype(model, config, replace_rope: bool = False):
    """HyPE in every attention layer of a transformers model: on top of its position
    encoding, or instead of RoPE (`replace_rope=True`). See hf_hyper.patches.hype_models."""
    from hf_hyper.patches.hype_models import apply_hype as _apply

    return _apply(model, config, replace_rope=replace_rope)


def remove_hype(model) -> None:
    from hf_hyper.patches.hype_models import remove_hype as _remove

    _remove(model)


def load_hype_model(path, **from_pretrained_kwargs):
    """from_pretrained for a checkpoint saved after `apply_hype` (settings and mu / tau)."""
    from hf_hyper.patches.hype_models import load_hype_model as _load

    return _load(path, **from_pretrained_kwargs)


def load_chatglm(path, *, trust_remote_code: bool = False, **from_pretrained_kwargs):
    """ChatGLM2-6B(-32k) / ChatGLM3 remote code, made to load, run and generate on
    transformers 5 (see hf_hyper.patches.chatglm_compat); trust_remote_code must be True."""
    from hf_hyper.patches.chatglm_compat import load_chatglm as _load

    return _load(path, trust_remote_code=trust_remote_code, **from_pretrained_kwargs)


__version__ = "0.1.0"

__all__ = [
    "AttentionDiagnostics",
    "HyPEConfig",
    "HyperAttentionConfig",
    "PatchReport",
    "hyper_attention",
    "hyper_attention_with_lse",
    "load_chatglm",
    "apply_hype",
    "attention_diagnostics",
    "capture_attention",
    "load_hype_model",
    "patch",
    "patch_report",
    "remove_hype",
    "supported_model_types",
    "unpatch",
]
