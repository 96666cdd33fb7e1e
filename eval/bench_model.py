"""Whole-model prefill speed: unpatched vs HyperAttention in the last k layers, one run.

Each patched setting is also timed with the attention of its patched layers made free
(a copy of V stands in for the output): that is the ceiling any attention kernel can
reach in those layers (Amdahl), so every row shows its speedup, the ceiling, and the
share of the ceiling it reaches. Weights do not change speed, so `--shape` builds a
randomly initialised model from a config (offline); `--model` loads a real checkpoint.

    hf-hyper bench model --shape llama2-7b --lengths 8192 32768 --patch-layers 0 16 28
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import clear_cuda_graphs, cuda_graph_stats

from .common import (
    JobError,
    command_line,
    output_dir,
    save_results,
    today,
    write_json,
)
from .config_arguments import add_config_arguments, config_from_arguments
from .models import DTYPES, parse_patch_settings, patched
from .plots import plot_model
from .timing import environment, time_cuda

SHAPES = {
    "llama2-7b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
    ),
    "llama3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
    ),
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=None,
    ),
    # ChatGLM2-6B's dimensions (28 layers, 32 query heads sharing 2 KV heads, FFN 13696,
    # vocab 65024) in a Llama: the same matmuls and attention shapes, offline
    "chatglm2-6b-shaped": dict(
        model_type="llama", hidden_size=4096, intermediate_size=13696, num_hidden_layers=28,
        num_attention_heads=32, num_key_value_heads=2, vocab_size=65024,
    ),
    # a small model, where each layer's GPU work is short next to the host's
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
    ),
    "qwen2-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
    ),
}  # fmt: skip
UNAVAILABLE_SHAPES = {
    "chatglm2-6b": (
        "ChatGLM2's modeling code is remote code that transformers does not ship, so no "
        "offline preset can build it; time a downloaded checkpoint with --model PATH "
        "--trust-remote-code, or its dimensions in a Llama with --shape chatglm2-6b-shaped"
    ),
}
COLUMNS = [
    ("length", "length"),
    ("patched_layers", "patched layers"),
    ("ms", "prefill ms"),
    ("speedup", "speedup"),
    ("free_ms", "free-attention ms"),
    ("ceiling", "ceiling"),
    ("share_of_ceiling", "share of ceiling"),
    ("peak_gib", "peak GiB"),
    ("tokens_per_s", "tokens/s"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--shape", choices=sorted([*SHAPES, *UNAVAILABLE_SHAPES]))
    which.add_argument("--model", help="from_pretrained id or local path")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--patch-layers", nargs="+", default=["0", "16", "28"])
    p.add_argument("--plan", default=None, help="a per-layer plan file: the setting 'plan'")
    add_config_arguments(
        p.add_argument_group("HyperAttention"), HyperAttentionConfig, defaults={"seed": 0}
    )
    p.add_argument(
        "--no-free", dest="free", action="store_false",
        help="skip timing each setting with free attention (the ceiling columns)",
    )  # fmt: skip
    p.add_argument(
        "--estimate-unpatched-above", type=int, default=None, metavar="N",
        help="past N tokens, estimate the unpatched prefill instead of running it: the "
        "free-attention prefill plus the patched layers' exact attention, each timed as "
        "one cuDNN call of the model's attention shape (default: always run it)",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=int, default=1,
        help="untimed prefills first; 0 times the kernels' compilation too",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output-dir", default="bench-model-results")


def build_model(args: argparse.Namespace):
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[args.dtype]
    if args.shape in UNAVAILABLE_SHAPES:
        raise JobError(f"--shape {args.shape}: {UNAVAILABLE_SHAPES[args.shape]}")
    if args.shape:
        fields = dict(SHAPES[args.shape])
        config = AutoConfig.for_model(
            fields.pop("model_type"), **fields, max_position_embeddings=max(args.lengths)
        )
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation="sdpa"
            )
        return model.eval(), args.shape
    try:
        model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=dtype, device_map="cuda", trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise JobError(f"cannot load model {args.model!r}: {str(err).splitlines()[0]}") from err
    return model.eval(), args.model


# where the patched layers call HyperAttention (the registry adapter, its padded-batch
# path, and ChatGLM's)
ATTENTION_CALLS = (
    "hf_hyper.patches.attention_interface.hyper_attention",
    "hf_hyper.patches.common.hyper_attention",
    "hf_hyper.patches.chatglm.hyper_attention",
)


def copy_of_v(query, key, value, **_) -> torch.Tensor:
    """Attention at no cost beyond writing its output: V, copied to every query head."""
    out = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    return out[:, :, -query.shape[2] :]


@contextlib.contextmanager
def free_attention() -> Iterator[None]:
    """Inside the block, patched layers return `copy_of_v` instead of attending."""
    with contextlib.ExitStack() as stack:
        for target in ATTENTION_CALLS:
            stack.enter_context(mock.patch(target, copy_of_v))
        yield


def graph_summary() -> dict:
    """How the patched layers' calls ran: graphs captured, replays (in place or copying
    the inputs in), calls run eagerly on first sight, and fallbacks by reason."""
    stats = cuda_graph_stats()
    return dict(
        captured=stats.captured, replayed=stats.replayed,
        replayed_in_place=stats.replayed_in_place, eager_first=stats.eager_first,
        fallbacks=dict(stats.fallbacks), held_gib=stats.held_bytes / 2**30,
    )  # fmt: skip


def _time(step, args: argparse.Namespace):
    try:
        return time_cuda(step, warmup=args.warmup, repeats=args.repeats)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def _prefill(model, ids: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        logits = model(ids, use_cache=False, logits_to_keep=1).logits
    if not torch.isfinite(logits).all():
        raise JobError(f"non-finite logits ({what})")


def exact_layer_ms(model, length: int, args: argparse.Namespace) -> float:
    """One causal cuDNN attention call of the model's attention shape, in ms."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dtype = next(model.parameters()).dtype
    q = torch.randn(1, heads, length, dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, kv_heads, length, dim, device="cuda", dtype=dtype) for _ in range(2))

    def call():
        with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=heads != kv_heads
            )

    return time_cuda(call, warmup=args.warmup, repeats=args.repeats).ms


def add_note(row: dict, note: str) -> None:
    row["note"] = f"{row['note']}; {note}" if row.get("note") else note


def _estimate_unpatched(model, length: int, rows: list[dict], args) -> None:
    """Fill the estimated unpatched row of `length` from its first free-attention row,
    and the patched rows' speedups against it."""
    base = next((r for r in rows if r["length"] == length and r["layer_count"] == 0), None)
    free = next((r for r in rows if r["length"] == length and r.get("free_ms")), None)
    if base is None:
        return  # no unpatched setting asked for
    if free is None:
        base["note"] = "not estimated: no patched setting with free attention ran"
        return
    layer_ms = exact_layer_ms(model, length, args)
    base["ms"] = free["free_ms"] + free["layer_count"] * layer_ms
    base["note"] = (
        f"estimate: free-attention prefill + {free['layer_count']} x one cuDNN layer "
        f"({layer_ms:.1f} ms)"
    )
    for row in rows:
        if row["length"] == length and row["layer_count"] and row.get("ms"):
            row["speedup"] = base["ms"] / row["ms"]
            add_note(row, "speedup vs the estimated unpatched prefill")
            if row.get("free_ms"):
                row["ceiling"] = base["ms"] / row["free_ms"]
                row["share_of_ceiling"] = row["speedup"] / row["ceiling"]


def time_prefill(
    model, settings, config: HyperAttentionConfig, args, on_row=None, earlier=None
) -> list[dict]:
    """One row per (length, patch setting): prefill ms, speedup over the unpatched run of
    the same length and, unless args.free is off, the free-attention ceiling. on_row(rows)
    runs after every row, so a run cut short keeps what it measured; earlier: rows of
    such a run, {(length, label): row}, taken as they are instead of timed again."""
    rows = []
    earlier = earlier or {}
    above = getattr(args, "estimate_unpatched_above", None)
    device = next(model.parameters()).device
    for length in args.lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
        base_ms, base_earlier = None, False
        estimate = above is not None and length > above
        for label, count in settings:
            row = dict(length=length, patched_layers=label, layer_count=count)
            rows.append(row)
            if count == 0 and estimate:
                continue  # estimated once a free-attention setting has run
            kept = earlier.get((length, label))
            if kept is not None:
                row.update(kept, from_earlier_run=True)
                if count == 0:
                    base_ms, base_earlier = kept["ms"], True
                print(f"  {row}", flush=True)
                continue
            clear_cuda_graphs()
            with patched(model, count, config):
                what = f"length {length}, patched {label}"
                step = functools.partial(_prefill, model, ids, what)
                timing = _time(step, args)
                if count:
                    row["cuda_graphs"] = graph_summary()
                free = None
                if timing is not None and count and args.free:
                    with free_attention():
                        free = _time(step, args)
            if timing is None:
                row["note"] = "out of memory"
            else:
                if count == 0:
                    base_ms, base_earlier = timing.ms, False
                row.update(ms=timing.ms, peak_gib=timing.peak_gib)
                row["speedup"] = base_ms / timing.ms if base_ms else None
                if base_earlier and count:  # a ratio across processes: say so
                    row["note"] = "speedup against the unpatched row of the earlier run"
                row["tokens_per_s"] = length / timing.ms * 1e3
                if count and not args.warmup:
                    add_note(row, "no warm-up: the time includes compiling the kernels")
            if free is not None:
                row["free_ms"] = free.ms
                if base_ms:
                    row["ceiling"] = base_ms / free.ms
                    row["share_of_ceiling"] = row["speedup"] / row["ceiling"]
            print(f"  {row}", flush=True)
            if on_row is not None:
                on_row(rows)
        if estimate:
            _estimate_unpatched(model, length, rows, args)
    return rows


def rows_to_resume(path: Path, payload: dict) -> dict[tuple[int, str], dict]:
    """Measured rows of a run cut short ({(length, label): row}) that timed the same model,
    dtype, config and device as `payload`; none if the run finished or differed."""
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    same = ("model", "dtype", "num_layers", "hyper_config")
    if earlier.get("complete", True) or any(earlier.get(k) != payload[k] for k in same):
        return {}
    if earlier.get("environment", {}).get("device") != payload["environment"].get("device"):
        return {}
    return {
        (row["length"], row["patched_layers"]): row
        for row in earlier.get("rows", [])
        if row.get("ms") is not None
    }


def run(args: argparse.Namespace) -> Path:
    if not torch.cuda.is_available():
        raise JobError("the model benchmark times CUDA prefill; run it on a GPU machine")
    out = output_dir(args.output_dir)
    model, name = build_model(args)
    num_layers = model.config.num_hidden_layers
    settings = parse_patch_settings(args.patch_layers, num_layers, args.plan, model)
    config = config_from_arguments(args, HyperAttentionConfig)
    payload = {
        "job": "bench model",
        "command": command_line("bench model"),
        "date": today(),
        "environment": environment(),
        "model": name,
        "dtype": args.dtype,
        "num_layers": num_layers,
        "hyper_config": config.to_dict(),
    }

    def keep_so_far(rows: list[dict]) -> None:
        write_json(out / "model.json", {**payload, "rows": rows, "complete": False})

    earlier = rows_to_resume(out / "model.json", payload)
    if earlier:
        print(f"resuming: {len(earlier)} rows from {out / 'model.json'}, a run cut short")
    payload["rows"] = time_prefill(
        model, settings, config, args, on_row=keep_so_far, earlier=earlier
    )
    save_results(out, "model", payload, COLUMNS, plot_model)
    return out
