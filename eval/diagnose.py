"""Where HyperAttention fits a model: per-layer and per-head error against exact attention
on the model's own activations, the paper's two hardness parameters (alpha, kappa), and,
given a perplexity budget, the largest set of layers that stays inside it.

    hf-hyper diagnose --model meta-llama/Llama-2-7b-hf --length 32768
    hf-hyper diagnose --length 8192 --ppl-budget 0.02      # the bundled reference model

One window of --length tokens runs through the unpatched model; every layer's attention
inputs are measured on the way (`hf_hyper.capture_attention` + `attention_diagnostics`),
so each layer sees exact activations. Layers are then ranked by their error; with
--ppl-budget the job measures perplexity with the k best-ranked layers patched and
bisects for the largest k within the budget (each tried set is measured, not predicted,
and cached in --output-dir so a rerun resumes). The final-k-layers convention with the
same k is measured next to it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import hf_hyper
from hf_hyper.attention import check_diagnosable

from .cache import ResultLog, run_key
from .common import (
    JobError,
    command_line,
    job_main,
    markdown_table,
    output_dir,
    positive_int,
    save_results,
    today,
)
from .models import (
    add_hyper_arguments,
    add_model_arguments,
    check_lengths,
    check_patchable,
    hyper_config,
    load_model,
    num_layers,
    require_approximation,
)
from .nll import mean_nll
from .plots import plot_diagnose
from .texts import (
    add_text_arguments,
    load_documents,
    text_source,
    token_streams,
    window_prefix,
)
from .timing import environment
from .windows import make_windows

COLUMNS = [
    ("layer", "layer"),
    ("error", "error ‖O−O*‖/‖V‖"),
    ("error_max_head", "worst head"),
    ("alpha_max", "max α"),
    ("log10_kappa_median", "median log10 κ"),
    ("log10_kappa_99_median", "median log10 κ (p99/p1)"),
    ("heavy_mass", "mass in exact part"),
    ("sink_mass", "mass on sinks (max head)"),
    ("block_lift_median", "LSH block mass (x chance)"),
    ("rank", "rank"),
]
HEAD_FIELDS = (
    "error", "alpha", "log10_kappa", "log10_kappa_99", "heavy_mass", "sink_mass", "block_lift",
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_text_arguments(p)
    p.add_argument(
        "--length", "--lengths", type=positive_int, default=8192,
        help="tokens in the measured window (one length)",
    )  # fmt: skip
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: every layer")
    p.add_argument("--allow-beyond-max-positions", action="store_true")
    rec = p.add_argument_group("layer recommendation")
    rec.add_argument(
        "--ppl-budget", type=float, default=None,
        help="largest relative perplexity increase allowed, e.g. 0.02 (default: no search)",
    )  # fmt: skip
    rec.add_argument("--ppl-windows", type=int, default=4, help="windows of --length to score")
    add_hyper_arguments(p, patch_default=None)
    p.add_argument("--output-dir", default="diagnose-results")


class LayerProbe:
    """The observer: diagnostics of every captured layer, keyed by layer index."""

    def __init__(self, config: hf_hyper.HyperAttentionConfig, progress) -> None:
        self.config = config
        self.progress = progress
        self.results: dict[int, hf_hyper.AttentionDiagnostics] = {}

    def __call__(self, layer: int, q, k, v, *, causal: bool, scale: float) -> None:
        if q.shape[0] != 1:
            raise JobError("diagnose measures one window at a time (batch size 1)")
        self.results[layer] = hf_hyper.attention_diagnostics(
            q, k, v, causal=causal, scale=scale, config=self.config
        )
        self.progress.update(1)


def measure_layers(
    model, ids: torch.Tensor, config: hf_hyper.HyperAttentionConfig, chosen: list[int],
    length: int,
) -> tuple[list[dict], list[dict], list[int]]:  # fmt: skip
    """(per-head rows, per-layer rows ranked by error, the layers measured) of one window
    `ids` [1, n] through the unpatched model: each layer's HyperAttention under `config`
    against exact attention on that layer's own inputs. Layers HyperAttention does not
    serve (sliding-window attention) are left out."""
    from tqdm.auto import tqdm

    with tqdm(total=len(chosen), desc=f"layers at {length} tokens") as bar:
        probe = LayerProbe(config, bar)
        try:
            with (
                hf_hyper.capture_attention(model, probe, layers=chosen) as observed,
                torch.no_grad(),
            ):
                bar.total = len(observed)  # the layers HyperAttention can serve
                bar.refresh()
                model.get_decoder()(input_ids=ids, use_cache=False)
        except (ValueError, RuntimeError) as err:
            raise JobError(str(err)) from err
    heads, layers = _layer_rows(probe.results)
    return heads, layers, sorted(observed)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _layer_rows(results: dict[int, hf_hyper.AttentionDiagnostics]):
    heads, layers = [], []
    for layer, diag in sorted(results.items()):
        per_head = {name: getattr(diag, name)[0].tolist() for name in HEAD_FIELDS}
        for h in range(diag.error.shape[1]):
            heads.append({"layer": layer, "head": h} | {
                name: _finite(values[h]) for name, values in per_head.items()})  # fmt: skip
        pooled = math.sqrt(diag.output_sq_error.sum().item() / diag.value_sq_norm.sum().item())

        def median(name: str, diag=diag) -> float | None:
            values = getattr(diag, name)[0]
            values = values[torch.isfinite(values)]
            return _finite(values.median().item()) if values.numel() else None

        alpha = diag.alpha[0][torch.isfinite(diag.alpha[0])]
        layers.append(dict(
            layer=layer, error=pooled, error_max_head=diag.error.max().item(),
            alpha_max=alpha.max().item() if alpha.numel() else None,
            log10_kappa_median=median("log10_kappa"),
            log10_kappa_99_median=median("log10_kappa_99"),
            heavy_mass=diag.heavy_mass.mean().item(),
            sink_mass=diag.sink_mass.max().item(),
            block_lift_median=median("block_lift"),
        ))  # fmt: skip
    for rank, row in enumerate(sorted(layers, key=lambda r: (r["error"], r["layer"])), 1):
        row["rank"] = rank
    return heads, layers


class PplTrials:
    """Perplexity with given layers patched, each set measured once and cached."""

    def __init__(self, model, windows, device, config, log: ResultLog) -> None:
        self.model, self.windows, self.device, self.config = model, windows, device, config
        self.log = log
        self.done = log.load()

    def __call__(self, layers: Sequence[int]) -> float:
        key = ",".join(map(str, sorted(layers)))
        if key not in self.done:
            if layers:
                hf_hyper.patch(self.model, layers=list(layers), config=self.config)
            try:
                nll = mean_nll(self.model, self.windows, self.device, key or "none")
            finally:
                if layers:
                    hf_hyper.unpatch(self.model)
            self.done[key] = {"key": key, "layers": sorted(layers), "ppl": math.exp(nll)}
            self.log.append(self.done[key])
            print(f"  patched {key or 'none'}: perplexity {math.exp(nll):.4f}")
        return self.done[key]["ppl"]


def recommend(trials: PplTrials, ranked: list[int], budget: float, total: int) -> dict:
    """Largest k whose k best-ranked layers keep perplexity within (1 + budget) x base.

    Bisection assumes perplexity grows with k along the ranking; every set it reports is
    measured. The final-k-layers convention with the same k is measured for comparison.
    """
    base = trials([])
    limit = base * (1 + budget)
    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if trials(ranked[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    chosen = sorted(ranked[:lo])
    final_k = list(range(total - lo, total))
    result = dict(
        budget=budget, base_ppl=base, limit_ppl=limit, layers=chosen, count=lo,
        ppl=trials(chosen), final_layers=final_k, final_layers_ppl=trials(final_k),
    )  # fmt: skip
    result["trials"] = list(trials.done.values())
    return result


# a layer whose LSH blocks hold less than this many times chance mass is served by its
# sinks and sample alone
LSH_AT_CHANCE = 1.5


def blind_layers(rows: list[dict]) -> list[int]:
    """Layers whose median LSH block mass is below LSH_AT_CHANCE times chance."""
    return [
        r["layer"] for r in rows
        if r.get("block_lift_median") is not None and r["block_lift_median"] < LSH_AT_CHANCE
    ]  # fmt: skip


def _summary(payload: dict) -> str:
    lines = []
    if payload.get("skipped_layers"):
        lines.append(
            f"\nNot measured: layers {payload['skipped_layers']} (sliding-window attention, "
            "which HyperAttention does not replace)"
        )
    blind = blind_layers(payload["rows"])
    if blind:
        lines.append(
            f"\nLSH blocks at chance (under {LSH_AT_CHANCE}x its mass) in layers {blind}: "
            "there the sinks and the uniform sample carry the whole approximation, so "
            "expect their error to grow with length"
        )
    rec = payload.get("recommendation")
    if not rec:
        return "\n".join(lines) + ("\n" if lines else "")
    lines += [
        f"\nPerplexity budget +{rec['budget']:.1%} over {rec['base_ppl']:.4f} "
        f"(limit {rec['limit_ppl']:.4f}, {payload['ppl_windows']} windows):",
        f"- patch layers {rec['layers']} ({rec['count']} of {payload['num_layers']}): "
        f"perplexity {rec['ppl']:.4f}",
    ]
    if rec["count"]:
        lines.append(
            f"- the final {rec['count']} layers {rec['final_layers']} instead: "
            f"perplexity {rec['final_layers_ppl']:.4f}"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Path:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.cpu)
    if accelerator.num_processes > 1:
        raise JobError("diagnose runs in one process (it measures one window)")
    if args.ppl_budget is not None and not args.ppl_budget >= 0:
        raise JobError(f"--ppl-budget must be >= 0 (a relative increase); got {args.ppl_budget}")
    if args.ppl_windows < 1:
        raise JobError(f"--ppl-windows must be at least 1; got {args.ppl_windows}")
    config = hyper_config(args)
    try:  # before the model loads: a refusal should not cost its loading time
        check_diagnosable(config)
    except ValueError as err:
        raise JobError(str(err)) from err
    require_approximation(config, args.length)
    source = text_source(args)
    docs = load_documents(source)
    model, tokenizer = load_model(args, accelerator.device)
    check_lengths([args.length], args, model)
    total = num_layers(model)
    streams = token_streams(tokenizer, docs, args.per_document)
    prefix = window_prefix(tokenizer)
    windows = make_windows(streams, args.length, None, args.ppl_windows, prefix)
    if not windows:
        raise JobError(f"the text has fewer than --length={args.length} tokens")
    device = next(model.parameters()).device

    chosen = list(range(total)) if args.layers is None else sorted(set(args.layers))
    outside = [layer for layer in chosen if not 0 <= layer < total]
    if outside:
        raise JobError(f"--layers {outside} do not exist; the model has layers 0..{total - 1}")
    check_patchable(model)
    out = output_dir(args.output_dir)  # once the input is known good: no empty folders
    ids = torch.tensor(windows[0].ids, device=device)[None]
    heads, layers, observed = measure_layers(model, ids, config, chosen, args.length)

    payload = {
        "job": "diagnose",
        "command": command_line("diagnose"),
        "date": today(),
        "environment": environment(),
        "model": args.model,
        "dtype": args.dtype,
        "num_layers": total,
        "text": source.describe(),
        "window": windows[0].id,
        "length": args.length,
        "hyper_config": config.to_dict(),
        "skipped_layers": sorted(set(chosen) - set(observed)),
        "rows": layers,
        "heads": heads,
    }
    if args.ppl_budget is not None:
        key = run_key(dict(model=args.model, dtype=args.dtype, text=source.describe(),
                           windows=[w.id for w in windows], config=config.to_dict(),
                           prefix=list(prefix)))  # fmt: skip
        trials = PplTrials(model, windows, device, config, ResultLog(out / f"trials-{key}", 0))
        ranked = [r["layer"] for r in sorted(layers, key=lambda r: r["rank"])]
        payload["ppl_windows"] = len(windows)
        payload["recommendation"] = recommend(trials, ranked, args.ppl_budget, total)
    table = markdown_table(layers, COLUMNS) + _summary(payload)
    save_results(out, "diagnose", payload, COLUMNS, plot_diagnose, table=table)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return job_main("hf-hyper diagnose", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
