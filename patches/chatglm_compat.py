"""Let the published ChatGLM2/3 remote code load, run and generate on transformers 5.

The remote code was written for transformers 4.2x and breaks on 5 in three places:
- construction reads `config.max_length` and `config.use_cache`, which transformers 5 no
  longer puts on every config (AttributeError);
- `generate()` then refuses a config that carries `max_length` (generation settings live
  in `generation_config` now);
- generation: transformers 5 hands the model a `DynamicCache`, while the remote code keeps
  its own tuple caches; its `_update_model_kwargs_for_generation` calls
  `_extract_past_from_model_output` (gone) and expects an attention mask that may be None.

`prepare_config` / `finish_construction` handle the first two around `from_pretrained`;
`fix_generation` patches the instance (nothing global) and `remove_generation_fixes`
undoes it. `load_chatglm` does all of it; `hf_hyper.patch` applies the generation fixes
too and `unpatch` removes the ones it applied. Each fix is reported when applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

logger = logging.getLogger("hf_hyper")

SUPPORTED = ((5, 0), (6, 0))  # transformers versions: [low, high)
FIXES_ATTR = "_hf_hyper_chatglm_fixes"
_INSTANCE_FIXES = (
    "_supports_default_dynamic_cache",
    "_extract_past_from_model_output",
    "_update_model_kwargs_for_generation",
)


def check_transformers_version() -> None:
    import transformers

    version = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    low, high = SUPPORTED
    if not low <= version < high:
        raise RuntimeError(
            f"hf_hyper's ChatGLM2 compatibility layer supports transformers "
            f"{low[0]}.{low[1]} to <{high[0]}.{high[1]}; found {transformers.__version__}"
        )


def prepare_config(config) -> list[str]:
    """Give the config the attributes the remote code reads while it builds the model."""
    check_transformers_version()
    added = []
    if "max_length" not in vars(config):
        config.max_length = int(getattr(config, "seq_length", 2048))
        added.append("max_length")
    if "use_cache" not in vars(config):
        config.use_cache = True
        added.append("use_cache")
    if added:
        logger.warning("ChatGLM compatibility: set config %s for construction", added)
    return added


def finish_construction(model: nn.Module) -> None:
    """`max_length` has been read into the model; on the config it would make transformers
    5's `generate()` refuse to run."""
    if "max_length" in vars(model.config):
        delattr(model.config, "max_length")


def _update_kwargs_wrapper(original):
    def update(outputs, model_kwargs, is_encoder_decoder=False, **_ignored):
        if model_kwargs.get("attention_mask") is None:  # transformers 5 passes None through
            model_kwargs.pop("attention_mask", None)
        return original(outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder)

    return update


def fix_generation(model: nn.Module) -> list[str]:
    """Instance-level fixes so `model.generate()` runs the remote code's own tuple cache
    loop. Returns the fixes applied now (none if the model needs none or has them)."""
    check_transformers_version()
    if getattr(model, FIXES_ATTR, None):
        return []
    from transformers import GenerationMixin

    cls = type(model)
    own = getattr(cls, "_update_model_kwargs_for_generation", None)
    if own is None or own is GenerationMixin._update_model_kwargs_for_generation:
        return []  # not the remote code's own generation loop: nothing to fix
    applied = []
    if "max_length" in vars(model.config):
        finish_construction(model)
        applied.append("config.max_length removed")
    model._supports_default_dynamic_cache = lambda: False
    applied.append("tuple KV caches (no DynamicCache)")
    if not hasattr(cls, "_extract_past_from_model_output"):
        model._extract_past_from_model_output = lambda outputs, standardize_cache_format=False: (
            outputs.past_key_values
        )
        applied.append("_extract_past_from_model_output")
    original = model._update_model_kwargs_for_generation
    model._update_model_kwargs_for_generation = _update_kwargs_wrapper(original)
    applied.append("_update_model_kwargs_for_generation: None attention mask, new kwargs")
    setattr(model, FIXES_ATTR, applied)
    logger.warning("ChatGLM compatibility: generation fixes applied: %s", applied)
    return applied


def remove_generation_fixes(model: nn.Module) -> None:
    for name in (*_INSTANCE_FIXES, FIXES_ATTR):
        vars(model).pop(name, None)


def load_chatglm(path: str | Path, *, trust_remote_code: bool = False, **from_pretrained_kwargs):
    """`from_pretrained` for ChatGLM2-6B(-32k) / ChatGLM3 remote code on transformers 5."""
    from transformers import AutoConfig, GenerationMixin
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    if not trust_remote_code:
        raise ValueError(
            "ChatGLM2 ships as remote code: pass trust_remote_code=True if you trust it "
            "(hf_hyper never implies it)"
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    if config.model_type != "chatglm" and type(config).__name__ != "ChatGLMConfig":
        raise ValueError(f"{path} is model_type={config.model_type!r}, not a ChatGLM model")
    prepare_config(config)
    remote_class = get_class_from_dynamic_module(config.auto_map["AutoModelForCausalLM"], path)

    bases = (remote_class,) if issubclass(remote_class, GenerationMixin) else (
        remote_class, GenerationMixin)  # fmt: skip

    class WithPostInit(*bases):
        """The remote class, finished the way transformers 5 expects: `post_init` sets what
        loading reads (e.g. the tied-weights table; its `_init_weights` is a no-op, so no
        weight changes), and `generate` comes from GenerationMixin, which PreTrainedModel
        no longer includes."""

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            self.post_init()

    WithPostInit.__name__ = remote_class.__name__
    WithPostInit.__module__ = remote_class.__module__
    model = WithPostInit.from_pretrained(path, config=config, **from_pretrained_kwargs)
    logger.warning("ChatGLM compatibility: loaded %s with post_init()", remote_class.__name__)
    finish_construction(model)
    fix_generation(model)
    return model
