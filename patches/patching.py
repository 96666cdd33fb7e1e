"""patch() / unpatch(): swap the attention of selected layers of a loaded model.

The adapters (one file per model family) are looked up in `registry`; this module only
selects layers, keeps the state needed to undo, and reports what it did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from hf_hyper.config import HyperAttentionConfig
from hf_hyper.plan import Plan

from .registry import AttentionObserver, adapter_for

STATE_ATTR = "_hf_hyper_patch"
CAPTURE_ATTR = "_hf_hyper_capture"


@dataclass(frozen=True)
class PatchReport:
    """What `patch` changed; kept on the model until `unpatch`."""

    model_type: str
    adapter: str
    layers: tuple[int, ...]
    num_layers: int
    # the config of every patched layer, or (a plan of several) None
    config: HyperAttentionConfig | None
    state: dict = field(default_factory=dict, repr=False, compare=False)
    # chosen layers the adapter left exact, with the reason (e.g. sliding-window layers)
    skipped: dict[int, str] = field(default_factory=dict)
    # each patched layer's config
    configs: dict[int, HyperAttentionConfig] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        skipped = ""
        if self.skipped:
            reasons = sorted(set(self.skipped.values()))
            skipped = f", skipped={sorted(self.skipped)} ({'; '.join(reasons)})"
        config = f"config={self.config}" if self.config is not None else "configs=per layer"
        return (
            f"PatchReport(model_type={self.model_type!r}, adapter={self.adapter!r}, "
            f"layers={list(self.layers)} of {self.num_layers}{skipped}, {config})"
        )


def select_layers(num_layers: int, last_layers: int | None, layers) -> list[int]:
    """Validate a layer choice: exactly one of `last_layers=k` or `layers=[...]`."""
    if (last_layers is None) == (layers is None):
        raise ValueError("pass exactly one of last_layers=k or layers=[...]")
    if last_layers is not None:
        if isinstance(last_layers, bool) or not isinstance(last_layers, int):
            raise TypeError(f"last_layers must be an int; got {last_layers!r}")
        if not 0 < last_layers <= num_layers:
            raise ValueError(
                f"last_layers must be in 1..{num_layers} (the model has {num_layers} layers); "
                f"got {last_layers}"
            )
        return list(range(num_layers - last_layers, num_layers))
    chosen = sorted(set(int(i) for i in layers))
    if not chosen:
        raise ValueError("layers=[...] is empty; name at least one layer")
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the model has layers 0..{num_layers - 1}")
    return chosen


def patch(
    model: nn.Module,
    *,
    last_layers: int | None = None,
    layers=None,
    config: HyperAttentionConfig | None = None,
    plan: Plan | str | Path | None = None,
) -> PatchReport:
    """Use HyperAttention in the final `last_layers` layers (or the given `layers`), all
    with `config`; or in the layers of a `plan` (a Plan or its JSON file), each with its
    own config.

    Patching a patched model is an error: `unpatch` first (this keeps the undo exact).
    Returns a report of the patched layers, also kept as `model._hf_hyper_patch`.
    """
    if getattr(model, STATE_ATTR, None) is not None:
        raise RuntimeError(
            f"model is already patched ({getattr(model, STATE_ATTR)}); call hf_hyper.unpatch first"
        )
    if getattr(model, CAPTURE_ATTR, None) is not None:
        raise RuntimeError("model is inside capture_attention; patch it after that block ends")
    if plan is not None and (last_layers is not None or layers is not None or config):
        raise ValueError("pass either plan=... or last_layers/layers with config, not both")
    if plan is None:
        config = config or HyperAttentionConfig()
        if not isinstance(config, HyperAttentionConfig):
            raise TypeError(f"config must be a HyperAttentionConfig; got {type(config).__name__}")
    elif not isinstance(plan, Plan):
        plan = Plan.load(plan)
    model_type, adapter = adapter_for(model)
    adapter.check(model)
    num_layers = adapter.num_layers(model)
    if plan is None:
        configs = dict.fromkeys(select_layers(num_layers, last_layers, layers), config)
    else:
        plan.check_model(model_type, num_layers)
        configs = dict(plan.layers)
    state = adapter.patch(model, configs)
    skipped = dict(state.get("skipped_layers", {}))
    patched = {i: c for i, c in configs.items() if i not in skipped}
    shared = set(patched.values())
    report = PatchReport(
        model_type, adapter.name, tuple(patched), num_layers,
        shared.pop() if len(shared) == 1 else None, state, skipped, patched,
    )  # fmt: skip
    setattr(model, STATE_ATTR, report)
    return report


def unpatch(model: nn.Module) -> None:
    """Undo `patch`: the model computes exactly what it did before."""
    report: PatchReport | None = getattr(model, STATE_ATTR, None)
    if report is None:
        raise RuntimeError("model is not patched by hf_hyper")
    _, adapter = adapter_for(model)
    adapter.unpatch(model, report.state)
    delattr(model, STATE_ATTR)


def patch_report(model: nn.Module) -> PatchReport | None:
    return getattr(model, STATE_ATTR, None)


@contextmanager
def capture_attention(
    model: nn.Module, observer: AttentionObserver, *, layers=None
) -> Iterator[list[int]]:
    """Inside the block, every forward hands the attention inputs of the chosen layers
    (default: all) to `observer(layer, q, k, v, causal=..., scale=...)` (q, k, v in
    [batch, heads, seq, head_dim], after the position encoding; GQA keys not repeated)
    and then computes the layer's own attention, so outputs are unchanged. For measuring
    attention on real activations (`attention_diagnostics`); inputs must be unpadded.
    Yields the layer indices observed: the chosen ones that `patch` would patch (Gemma 3's
    sliding-window layers, for one, are left out).
    """
    if getattr(model, STATE_ATTR, None) is not None:
        raise RuntimeError("capture_attention needs an unpatched model; call hf_hyper.unpatch")
    if getattr(model, CAPTURE_ATTR, None) is not None:
        raise RuntimeError("capture_attention blocks cannot be nested")
    _, adapter = adapter_for(model)
    adapter.check(model)
    num_layers = adapter.num_layers(model)
    chosen = list(range(num_layers)) if layers is None else select_layers(num_layers, None, layers)
    state = adapter.observe(model, chosen, observer)
    setattr(model, CAPTURE_ATTR, state)
    try:
        yield list(state.get("observed_layers", chosen))
    finally:
        adapter.unpatch(model, state)
        delattr(model, CAPTURE_ATTR)
