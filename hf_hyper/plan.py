"""Per-layer plans: which layers of a model run HyperAttention, each with its own config.

Whether a patched model keeps its long-context skills depends on which layers are
patched and how; a plan records that choice for one model type, with what it was chosen
under (budgets, measured results, versions), so it can be saved, reviewed and reused:

    plan = hf_hyper.Plan({20: fast, 21: fast, 29: accurate}, model_type="llama")
    plan.save("smollm2.plan.json")
    hf_hyper.patch(model, plan="smollm2.plan.json")

No transformers here: a plan is data; `hf_hyper.patch` applies it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import HyperAttentionConfig

PLAN_FORMAT = "hf_hyper.plan"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan that cannot be used: a malformed file, or one for another model."""


def _installed_versions() -> dict[str, str]:
    found = {}
    for name in ("hf_hyper", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@dataclass(frozen=True)
class Plan:
    """layers: layer index -> the HyperAttentionConfig that layer runs (layers not named
    stay exact). model_type / num_layers: the model the plan was made for (None: any);
    `hf_hyper.patch` refuses a model that differs. info: what the plan was chosen under
    and what it measured (budgets, results, calibration data), kept in its file."""

    layers: Mapping[int, HyperAttentionConfig]
    model_type: str | None = None
    num_layers: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping) or not self.layers:
            raise PlanError("Plan.layers must map at least one layer index to a config")
        clean = {}
        for index, config in self.layers.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise PlanError(
                    f"Plan.layers keys must be layer indices (ints >= 0); got {index!r}"
                )
            if not isinstance(config, HyperAttentionConfig):
                raise PlanError(
                    f"Plan.layers[{index}] must be a HyperAttentionConfig; "
                    f"got {type(config).__name__}"
                )
            clean[index] = config
        object.__setattr__(self, "layers", dict(sorted(clean.items())))
        if self.num_layers is not None and max(clean) >= self.num_layers:
            raise PlanError(
                f"Plan names layer {max(clean)} but num_layers={self.num_layers} "
                f"(layers 0..{self.num_layers - 1})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "layers": {str(i): c.to_dict() for i, c in self.layers.items()},
            "info": self.info,
            "versions": _installed_versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (with the versions that wrote it); returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """A plan from its JSON file; PlanError naming the file and the fix otherwise."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"no plan file at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PlanError(
                f"plan file {path} is not readable JSON ({err}); write it with Plan.save "
                "or `hf-hyper plan`"
            ) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        def bad(what: str) -> PlanError:
            return PlanError(f"{source}: {what}; write plans with Plan.save or `hf-hyper plan`")

        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise bad(f'not a plan (no "format": "{PLAN_FORMAT}")')
        if data.get("version") != PLAN_VERSION:
            raise bad(f"plan version {data.get('version')!r}; this hf_hyper reads {PLAN_VERSION}")
        layers_data = data.get("layers")
        if not isinstance(layers_data, dict) or not layers_data:
            raise bad('"layers" must map layer indices to configs')
        names = {f.name for f in dataclasses.fields(HyperAttentionConfig)}
        layers = {}
        for key, values in layers_data.items():
            if not (isinstance(key, str) and key.isdigit()):
                raise bad(f"layer key {key!r} is not a layer index")
            if not isinstance(values, dict):
                raise bad(f"layer {key}'s config is not an object")
            unknown = sorted(set(values) - names)
            if unknown:
                raise bad(f"layer {key}'s config has unknown fields {unknown}")
            try:
                layers[int(key)] = HyperAttentionConfig(**values)
            except (TypeError, ValueError) as err:
                raise bad(f"layer {key}: {err}") from None
        model_type, num_layers = data.get("model_type"), data.get("num_layers")
        if model_type is not None and not isinstance(model_type, str):
            raise bad('"model_type" must be a string or null')
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, int)
        ):
            raise bad('"num_layers" must be an int or null')
        info = data.get("info") or {}
        if not isinstance(info, dict):
            raise bad('"info" must be an object')
        try:
            return cls(layers, model_type, num_layers, info)
        except PlanError as err:
            raise bad(str(err)) from None

    def check_model(self, model_type: str, num_layers: int, source: str = "the plan") -> None:
        """PlanError unless this plan may patch a model of this type and depth."""
        if self.model_type is not None and self.model_type != model_type:
            raise PlanError(
                f"{source} is for model type {self.model_type!r}; this model is {model_type!r}: "
                "use a plan made for this model (hf-hyper plan)"
            )
        if self.num_layers is not None and self.num_layers != num_layers:
            raise PlanError(
                f"{source} is for a model of {self.num_layers} layers; this one has {num_layers}: "
                "use a plan made for this model (hf-hyper plan)"
            )
        missing = [i for i in self.layers if i >= num_layers]
        if missing:
            raise PlanError(
                f"{source} names layers {missing}, which this model lacks (layers "
                f"0..{num_layers - 1})"
            )
