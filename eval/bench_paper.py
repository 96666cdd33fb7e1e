"""The HyperAttention paper's speed experiments in one command, beside its stated numbers.

First the single-layer grid of the paper: n = 1k ... 131k, head dim 64, batch 1, 32
heads, forward and forward+backward, causal and not, against SDPA's FlashAttention-2 and
cuDNN kernels in the same process. Then whole-model prefill at 32k in a model of
ChatGLM2-6B's dimensions (random weights), unpatched and patched. Where the paper states
a number it is printed next to ours with its source and its baseline, so that like is
compared with like: the paper measured against FlashAttention on an A100.

    hf-hyper bench paper
    hf-hyper bench paper --lengths 4096 32768 131072 --patch-layers 0 all
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_hyper import HyperAttentionConfig

from . import bench_attention, bench_model
from .common import JobError, command_line, markdown_table, output_dir, save_results, today
from .config_arguments import add_config_arguments, config_from_arguments
from .models import parse_patch_settings
from .plots import plot_attention
from .timing import environment

SOURCE = "Han et al. 2023, arXiv 2310.05869, abstract"
PAPER_BASELINE = "FlashAttention, on an A100 (the paper's runs)"
# the paper's stated speedups: (what, where ours is read from, its number); the abstract
# does not say whether its one-layer number is forward or forward+backward, so ours
# shows both modes that ran
CLAIMS = [
    ("one causal attention layer, n = 131072", "layer", 5.0),
    ("ChatGLM2-6B-32k inference at 32k (50% faster)", "model", 1.5),
]
LAYER_BACKENDS = ["cudnn", "flash2", "hyper"]
CLAIM_COLUMNS = [
    ("claim", "the paper's claim"),
    ("paper", "paper"),
    ("paper_baseline", "paper's baseline"),
    ("ours", "ours"),
    ("our_baseline", "our baseline"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lengths", type=int, nargs="+", default=[2**i for i in range(10, 18)])
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    p.add_argument(
        "--model-shape", choices=sorted(bench_model.SHAPES), default="chatglm2-6b-shaped"
    )
    p.add_argument("--model-length", type=int, default=32768, help="prefill tokens (0: skip)")
    p.add_argument(
        "--patch-layers", "--model-patch-layers", dest="patch_layers", nargs="+",
        default=["0", "14", "all"],
        help="the model experiment's settings: final layers patched, or 'all' "
        "(--model-patch-layers: the old name, kept for one release)",
    )  # fmt: skip
    add_config_arguments(
        p.add_argument_group("HyperAttention"), HyperAttentionConfig, defaults={"seed": 0}
    )
    p.add_argument("--warmup", type=int, default=2, help="one-layer grid (the prefill: 1)")
    p.add_argument("--repeats", type=int, default=5, help="one-layer grid (the prefill: 3)")
    p.add_argument("--output-dir", default="bench-paper-results")


def _layer_args(args: argparse.Namespace) -> argparse.Namespace:
    """The paper's grid as `bench attention` arguments."""
    layer = argparse.Namespace(**vars(args))
    layer.heads = layer.kv_heads = 32
    layer.head_dim = [64]
    layer.causal = "both"
    layer.backends = LAYER_BACKENDS
    layer.dtype = "bf16"
    return layer


def _model_args(args: argparse.Namespace) -> argparse.Namespace:
    model = argparse.Namespace(**vars(args))
    model.shape, model.model, model.dtype = args.model_shape, None, "bf16"
    model.lengths, model.free = [args.model_length], True
    model.warmup, model.repeats = 1, 3
    return model


def _ratio(rows: list[dict], numerator: str, denominator: str) -> float | None:
    ms = {r["backend"]: r.get("ms") for r in rows}
    if ms.get(numerator) and ms.get(denominator):
        return ms[numerator] / ms[denominator]
    return None


def compare_with_paper(layer_rows: list[dict], model_rows: list[dict], shape: str) -> list[dict]:
    """One row per claim of the paper: its number and ours (None where not run)."""
    out = []
    for claim, where, paper in CLAIMS:
        row = dict(claim=claim, paper=f"{paper:g}x", paper_baseline=PAPER_BASELINE)
        if where == "model":
            best = max(
                (r for r in model_rows if r.get("layer_count") and r.get("speedup")),
                key=lambda r: r["speedup"], default=None,
            )  # fmt: skip
            row["ours"] = f"{best['speedup']:.2f}x" if best else "not run"
            patched = f", {best['patched_layers']} layers patched" if best else ""
            row["our_baseline"] = f"unpatched SDPA prefill, {shape} (random weights){patched}"
        else:
            ours, versus_cudnn = [], []
            for mode in ("fwd", "fwd+bwd"):
                cell = [r for r in layer_rows
                        if r["n"] == 131072 and r["causal"] and r["mode"] == mode]  # fmt: skip
                fa2, cudnn = _ratio(cell, "flash2", "hyper"), _ratio(cell, "cudnn", "hyper")
                if fa2:
                    ours.append(f"{mode} {fa2:.1f}x")
                if cudnn:
                    versus_cudnn.append(f"{mode} {cudnn:.1f}x")
            row["ours"] = ", ".join(ours) or "not run"
            row["our_baseline"] = "SDPA FlashAttention-2" + (
                f" (vs cuDNN: {', '.join(versus_cudnn)})" if versus_cudnn else ""
            )
        out.append(row)
    return out


def run(args: argparse.Namespace) -> Path:
    if not torch.cuda.is_available():
        raise JobError("the paper's benchmarks time CUDA kernels; run them on a GPU machine")
    out = output_dir(args.output_dir)
    config = config_from_arguments(args, HyperAttentionConfig)
    print("one attention layer (the paper's grid)", flush=True)
    layer_rows = bench_attention.run_benchmark(_layer_args(args))
    model_rows = []
    if args.model_length:
        print(f"whole-model prefill, {args.model_shape}, {args.model_length} tokens", flush=True)
        margs = _model_args(args)
        model, _ = bench_model.build_model(margs)
        settings = parse_patch_settings(args.patch_layers, model.config.num_hidden_layers)
        model_rows = bench_model.time_prefill(model, settings, config, margs)
        del model
        torch.cuda.empty_cache()
    claims = compare_with_paper(layer_rows, model_rows, args.model_shape)
    table = "\n".join([
        f"The paper's numbers ({SOURCE}) beside ours:\n",
        markdown_table(claims, CLAIM_COLUMNS),
        "One attention layer (bf16, batch 1, 32 heads, d 64; speedup vs cuDNN):\n",
        markdown_table(layer_rows, bench_attention.COLUMNS),
        f"Whole-model prefill ({args.model_shape}, bf16):\n",
        markdown_table(model_rows, bench_model.COLUMNS),
    ])  # fmt: skip
    payload = {
        "job": "bench paper",
        "command": command_line("bench paper"),
        "date": today(),
        "environment": environment(),
        "hyper_config": config.to_dict(),
        "paper": {"source": SOURCE, "baseline": PAPER_BASELINE},
        "claims": claims,
        "rows": layer_rows,
        "model_rows": model_rows,
    }
    save_results(out, "paper", payload, bench_attention.COLUMNS, plot_attention, table=table)
    return out
