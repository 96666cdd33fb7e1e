"""Model loading and patch settings shared by the jobs that run a checkpoint."""

from __future__ import annotations

import argparse
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig, Plan

from .common import JobError
from .config_arguments import add_config_arguments, config_from_arguments

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The bundled 8.9M-parameter Llama (RoPE, trained at 8k tokens on Debian documentation):
# what the jobs run when no --model is given, offline.
REFERENCE_MODEL = "hf_hyper-reference"
REFERENCE_MODEL_DIR = Path(__file__).with_name("reference_model")


def model_source(name: str) -> str:
    return str(REFERENCE_MODEL_DIR) if name == REFERENCE_MODEL else name


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=REFERENCE_MODEL,
        help=f"from_pretrained id or local path (default: {REFERENCE_MODEL}, the bundled "
        "8.9M-parameter reference Llama, offline)",
    )  # fmt: skip
    p.add_argument(
        "--gguf-file", default=None,
        help="a GGUF checkpoint inside --model (a folder): loaded and dequantized by "
        "transformers (needs the gguf package); e.g. SmolLM2-135M-Instruct.Q4_1.gguf",
    )  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="default: --model")
    p.add_argument("--trust-remote-code", action="store_true", help="passed to from_pretrained")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard a big model over GPUs")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")


def add_hyper_arguments(p: argparse.ArgumentParser, patch_default: Sequence[str] | None) -> None:
    """HyperAttention settings; --patch-layers too unless patch_default is None."""
    hyp = p.add_argument_group("HyperAttention")
    if patch_default is not None:
        hyp.add_argument(
            "--patch-layers",
            nargs="+",
            default=list(patch_default),
            help="settings to compare: number of final layers patched, or 'all' (0 = "
            "unpatched), or 'plan' (the layers of --plan), or 'only:I' (layer I alone) or "
            "'except:I' (every layer but I)",
        )
        hyp.add_argument(
            "--plan",
            default=None,
            help="a per-layer plan file (hf_hyper.Plan.save): the setting 'plan' patches its "
            "layers, each with its own config, and is added to --patch-layers if missing; "
            "the options below then apply to the other settings only",
        )
    # jobs are reproducible by default: seed 0 unless the user picks another
    add_config_arguments(hyp, HyperAttentionConfig, defaults={"seed": 0})


def hyper_config(args: argparse.Namespace) -> HyperAttentionConfig:
    return config_from_arguments(args, HyperAttentionConfig)


# With the default min_seq_len (4096) every call at 4096 tokens is exact and 8192 is the
# shortest length where HyperAttention runs: the pair shows both.
DEFAULT_LENGTHS = (4096, 8192)


def default_lengths(model) -> list[int]:
    """DEFAULT_LENGTHS that the model's positions reach (else its own limit), said aloud."""
    limit = getattr(model.config, "max_position_embeddings", None)
    lengths = [n for n in DEFAULT_LENGTHS if not limit or n <= limit] or [limit]
    if lengths != list(DEFAULT_LENGTHS):
        print(f"lengths: {lengths} (the model has {limit} positions)", flush=True)
    return lengths


def check_lengths(lengths: list[int], args: argparse.Namespace, model) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    too_long = [n for n in lengths if limit and n > limit]
    if too_long and not args.allow_beyond_max_positions:
        raise JobError(
            f"--lengths {too_long} exceed the model's max_position_embeddings={limit}; "
            "drop them or pass --allow-beyond-max-positions"
        )


def require_approximation(config: HyperAttentionConfig, length: int) -> None:
    """JobError unless a causal call of `length` queries runs HyperAttention: a job that
    measures the approximation has nothing to measure where every call is exact."""
    if config.runs_exact(length, True):
        raise JobError(
            f"at --length {length} every call is short enough to run exact attention "
            f"(up to {config.exact_query_len(True)} queries: min_seq_len / exact_up_to), so "
            "there is no approximation to measure: use a longer --length or a smaller "
            "--min-seq-len"
        )


# --patch-layers only:I (layer I alone patched) and except:I (every layer but I).
ONE_LAYER_SETTING = re.compile(r"(only|except):(\d+)")


def check_patch_values(values: Sequence[str], plan_file: str | None = None) -> None:
    """Syntax only, before a model is loaded (the layer count comes with the model)."""
    for value in values:
        named = value in ("all", "plan") or ONE_LAYER_SETTING.fullmatch(value)
        if not (named or value.isdigit()):
            raise JobError(
                "--patch-layers takes integers, 'all', 'plan', 'only:I' or 'except:I' "
                f"(I a layer index); got {value!r}"
            )
    if "plan" in values and plan_file is None:
        raise JobError("--patch-layers plan needs --plan FILE (a plan saved by hf_hyper.Plan)")
    if plan_file is not None:
        load_plan(plan_file)  # a missing or malformed file fails before the model loads


class PlannedLayers(int):
    """The --patch-layers setting 'plan': an int (the number of layers the plan patches,
    so jobs count and record it like any other setting) that carries its plan."""

    plan: Plan

    def __new__(cls, plan: Plan) -> PlannedLayers:
        setting = super().__new__(cls, len(plan.layers))
        setting.plan = plan
        return setting


class ChosenLayers(int):
    """The --patch-layers settings 'only:I' and 'except:I': an int (how many layers are
    patched, so jobs count and record it like any other setting) that carries which."""

    layers: tuple[int, ...]

    def __new__(cls, layers: Sequence[int]) -> ChosenLayers:
        setting = super().__new__(cls, len(layers))
        setting.layers = tuple(layers)
        return setting


def servable_layers(model) -> list[int]:
    """The layers HyperAttention can serve: all of them but sliding-window ones (Gemma
    3's), which patching leaves exact."""
    try:
        with hf_hyper.capture_attention(model, lambda *args, **kwargs: None) as observed:
            return sorted(observed)
    except (ValueError, RuntimeError) as err:
        raise JobError(str(err)) from err


def one_layer_settings(layers: Sequence[int]) -> list[str]:
    """The --patch-layers values of a per-layer attribution: each layer alone patched,
    then every layer but that one."""
    return [f"only:{i}" for i in layers] + [f"except:{i}" for i in layers]


def load_plan(plan_file: str, model=None) -> Plan:
    """The plan in --plan, checked against the model's type and depth where given."""
    try:
        plan = Plan.load(plan_file)
        if model is not None:
            from hf_hyper.patches.registry import adapter_for

            model_type, adapter = adapter_for(model)
            plan.check_model(model_type, adapter.num_layers(model), source=f"--plan {plan_file}")
    except ValueError as err:
        raise JobError(str(err)) from err
    return plan


def check_patchable(model) -> None:
    """An unsupported model_type, or a model its adapter refuses, is an error before any
    setting runs (not after the unpatched one has taken hours)."""
    from hf_hyper.patches.registry import adapter_for

    try:
        _, adapter = adapter_for(model)
        adapter.check(model)
    except ValueError as err:
        raise JobError(str(err)) from err


def parse_patch_settings(
    values: Sequence[str], num_layers: int, plan_file: str | None = None, model=None
) -> list[tuple[str, int]]:
    """['0', '8', 'all'] -> [('0', 0), ('8', 8), ('all', num_layers)]; with a --plan file,
    ('plan', PlannedLayers(plan)), added at the end if `values` lacks it (the plan checked
    against `model` where given); 'only:3' -> ('only:3', ChosenLayers([3])) and 'except:3'
    -> every servable layer of `model` but 3 (every layer where no model is given)."""
    check_patch_values(values, plan_file)
    plan = load_plan(plan_file, model) if plan_file else None
    if plan is not None and "plan" not in values:
        values = [*values, "plan"]
    settings: list[tuple[str, int]] = []
    servable: list[int] | None = None
    for value in dict.fromkeys(values):  # a setting named twice runs once
        if value == "plan":
            assert plan is not None  # check_patch_values refuses 'plan' without a file
            settings.append((value, PlannedLayers(plan)))
            continue
        one_layer = ONE_LAYER_SETTING.fullmatch(value)
        if one_layer:
            if servable is None:
                servable = servable_layers(model) if model is not None else list(range(num_layers))
            settings.append((value, _one_layer_setting(*one_layer.groups(), servable, num_layers)))
            continue
        count = num_layers if value == "all" else int(value)
        if count > num_layers:
            raise JobError(
                f"--patch-layers {count} is beyond the model's {num_layers} layers "
                f"(use 0..{num_layers} or 'all')"
            )
        settings.append((value, count))
    return settings


def _one_layer_setting(kind: str, index: str, servable: list[int], total: int) -> ChosenLayers:
    layer = int(index)
    if layer not in servable:
        where = "does not exist" if layer >= total else "is not one HyperAttention serves"
        raise JobError(
            f"--patch-layers {kind}:{layer}: layer {layer} {where}; choose among "
            f"{_ranges(servable)}"
        )
    if kind == "only":
        return ChosenLayers([layer])
    return ChosenLayers([i for i in servable if i != layer])


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def num_layers(model) -> int:
    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not count:
        raise JobError(f"cannot tell how many layers {type(model).__name__} has")
    return int(count)


def load_model(args: argparse.Namespace, device: torch.device):
    """(model in eval mode on `device` or spread by --device-map, tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = model_source(args.model)
    looks_local = source.startswith(("/", "./", "../", "~"))
    if looks_local and not Path(source).expanduser().exists():
        raise JobError(f"no model at {args.model} (check --model)")
    kwargs = {"dtype": DTYPES[args.dtype], "trust_remote_code": args.trust_remote_code}
    gguf = gguf_arguments(args, source)
    kwargs.update(gguf)
    if args.device_map:
        kwargs["device_map"] = args.device_map
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=args.trust_remote_code, **gguf
        )
        if config.model_type == "chatglm" or type(config).__name__ == "ChatGLMConfig":
            # remote code written for transformers 4: loaded through the compatibility layer
            model = hf_hyper.load_chatglm(source, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            model_source(args.tokenizer or args.model),
            trust_remote_code=args.trust_remote_code,
            **({} if args.tokenizer else gguf),
        )
    except ImportError as err:  # transformers' GGUF reader needs the gguf package
        first = str(err).strip().splitlines()[0]
        raise JobError(f"cannot read {args.gguf_file}: {first} (pip install gguf)") from err
    except (OSError, ValueError, KeyError, EOFError, struct.error) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        what = f"{args.model!r}" + (f" with --gguf-file {args.gguf_file}" if gguf else "")
        hint = "; is the GGUF file complete? copy it again" if gguf else ""
        raise JobError(f"cannot load model/tokenizer {what}: {first}{hint}") from err
    # the base vocabulary, not added special tokens, which plain text does not produce
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer.vocab_size > rows:
        raise JobError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model embeds {rows}: its "
            "ids would index past the embedding; pass the model's own tokenizer (--tokenizer)"
        )
    if not args.device_map:
        model.to(device)
    return model.eval(), tokenizer


def gguf_arguments(args: argparse.Namespace, source: str) -> dict[str, str]:
    """from_pretrained's gguf_file for --gguf-file (checked to exist first), or {}."""
    name = getattr(args, "gguf_file", None)
    if not name:
        return {}
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise JobError(
            f"--gguf-file needs --model to be the folder that holds it; {args.model!r} is not "
            "a folder"
        )
    if not (folder / name).is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f"GGUF files there: {', '.join(found)}" if found else "it holds no .gguf file"
        raise JobError(
            f"no GGUF file {name!r} in {folder} ({hint}): check --gguf-file, and --model names "
            "the folder that holds it"
        )
    return {"gguf_file": name}


@contextmanager
def patched(model, count: int, config: HyperAttentionConfig) -> Iterator[None]:
    """HyperAttention in the last `count` layers inside the block (0: unchanged), in the
    layers a ChosenLayers count carries, or in the layers of the plan a PlannedLayers
    count carries, each with its own config."""
    if count:
        try:
            plan = getattr(count, "plan", None)
            if plan is not None:
                hf_hyper.patch(model, plan=plan)
            elif isinstance(count, ChosenLayers):
                hf_hyper.patch(model, layers=list(count.layers), config=config)
            else:
                hf_hyper.patch(model, last_layers=count, config=config)
        except (ValueError, TypeError) as err:
            raise JobError(str(err)) from err
    try:
        yield
    finally:
        if count:
            hf_hyper.unpatch(model)
