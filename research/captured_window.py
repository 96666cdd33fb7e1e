"""One window of held-out text through a real checkpoint, for the benchmarks that study
its captured attention inputs (`large_entry_oracle.py`, `bucket_finders.py`,
`residual_estimators.py`, `kmeans_fit.py`), the first causal cut's rectangles they
measure on, and the per-layer error table of HyperAttention settings there."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_hyper import HyperAttentionConfig, capture_attention, hyper_attention


def add_window_arguments(p: argparse.ArgumentParser, length: int, required: bool = True) -> None:
    """--model, --gguf-file, --text, --length, --layers; required=False for a study whose
    other measurements need no model (it then checks --model and --text itself)."""
    p.add_argument("--model", required=required)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--text", required=required, help="a UTF-8 text file")
    p.add_argument("--length", type=int, default=length)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all patchable")


def model_and_window(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model in float32 and the text's first args.length tokens as the tokenizer
    makes them (with whatever prefix it adds, as the jobs' windows have)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, gguf_file=args.gguf_file, dtype=torch.float32
    ).eval()
    with open(args.text, encoding="utf-8") as f:
        text = f.read(args.length * 12)  # a dozen characters per token is plenty
    return model, tokenizer(text, return_tensors="pt").input_ids[:, : args.length]


@dataclass
class Rectangle:
    """One KV head's first-cut rectangle in float64: queries q [g, rows, d] after the
    cut, keys k [n/2, d] and values v [n/2, dv] before it, scaled scores [g, rows, n/2],
    the exact output [g, rows, dv], and v_sq, the squared Frobenius norm of V counted
    once per query row (the denominator of ||O - O*||_F / ||V||_F)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scores: torch.Tensor
    exact: torch.Tensor
    v_sq: float


def cut_rectangles(q, k, v, scale: float, rows: int) -> Iterator[Rectangle]:
    """The first `rows` queries after the first causal cut against the keys before it,
    one KV head at a time, from captured q [1, hq, n, d], k, v [1, hk, n, d]."""
    half = q.shape[2] // 2
    g = q.shape[1] // k.shape[1]
    for kv in range(k.shape[1]):
        qz = q[0, kv * g : (kv + 1) * g, half : half + rows].double()
        kz, vz = k[0, kv, :half].double(), v[0, kv, :half].double()
        scores = qz @ kz.T * scale
        v_sq = vz.pow(2).sum().item() * g * qz.shape[1] / half
        yield Rectangle(qz, kz, vz, scores, torch.softmax(scores, -1) @ vz, v_sq)


def first_cut_errors(q, k, v, scale: float, settings: dict[str, Callable[[int], object]],
                     seeds: int) -> dict[str, float]:  # fmt: skip
    """||O - O*||_F / ||V||_F of non-causal HyperAttention on the first cut's rectangle
    (the second half's queries against the first half's keys, float64) for each
    setting, the mean over `seeds` seeds: settings[name](seed) gives the config (and may
    set what a config does not hold)."""
    half = q.shape[2] // 2
    q, k, v = q[:, :, half:].double(), k[:, :, :half].double(), v[:, :, :half].double()
    g = q.shape[1] // k.shape[1]
    k_full, v_full = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    exact = torch.softmax(q @ k_full.transpose(-1, -2) * scale, -1) @ v_full
    errors = {}
    for name, config_of in settings.items():
        total = 0.0
        for seed in range(seeds):
            out = hyper_attention(q, k, v, causal=False, scale=scale, config=config_of(seed))
            total += ((out - exact).norm() / v_full.norm()).item()
        errors[name] = total / seeds
    return errors


def plan_errors(
    q, k, v, scale: float, plans: dict[str, Callable], estimate: Callable, keys_of: Callable,
    seeds: int,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:  # fmt: skip
    """For studies of a per-query plan: each plan's ||O - O*||_F / ||V||_F over the KV
    heads' first-cut rectangles (mean over `seeds` seeds) and its exact keys per query
    (mean, 99th percentile). plans[name](q, k) plans a rectangle (q [1, g, rows, d],
    k [1, nk, d]); estimate(q, k, v, plan, seed) -> [1, g, rows, dv]; keys_of(plan) ->
    each query's exact keys."""
    half = q.shape[2] // 2
    errors, keys = {}, {}
    for name, plan_of in plans.items():
        total, counted = 0.0, []
        for seed in range(seeds):
            err_sq = v_sq = 0.0
            for rect in cut_rectangles(q, k, v, scale, half):
                qz, kz, vz = rect.q[None], rect.k[None], rect.v[None]
                plan = plan_of(qz, kz)
                out = estimate(qz, kz, vz, plan, seed=seed)
                err_sq += (out[0] - rect.exact).pow(2).sum().item()
                v_sq += rect.v_sq
                counted.append(keys_of(plan).double())
            total += (err_sq / v_sq) ** 0.5
        errors[name] = total / seeds
        every = torch.cat(counted)
        keys[name] = (every.mean().item(), every.quantile(0.99).item())
    return errors, keys


def print_keys_summary(keys_seen: list[dict[str, tuple[float, float]]]) -> None:
    """The exact keys per query of each plan (as `plan_errors` gives them, one dict per
    layer), mean and 99th percentile averaged over the layers."""
    print("\nexact keys per query (sinks included), mean / 99th percentile, mean over layers:")
    for name in keys_seen[0]:
        mean = sum(layer[name][0] for layer in keys_seen) / len(keys_seen)
        p99 = sum(layer[name][1] for layer in keys_seen) / len(keys_seen)
        print(f"- {name}: {mean:.0f} / {p99:.0f}")


def planted_top_level(n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The top causal level's problem of the speed benchmark's planted inputs at length n
    (one head, d=128, float64): its n/2 queries [1, 1, n/2, d], the n/2 keys before them
    [1, n/2, d], and the scale."""
    from hf_hyper.eval.bench_attention import planted_inputs

    q, k, _ = planted_inputs(n, 1, 1, 128, torch.float32, True, 0, device="cpu")
    half = n // 2
    return q[:, :, half:].double(), k[:, 0, :half].double(), q.shape[-1] ** -0.5


def rectangle_config(seed: int, **fields) -> HyperAttentionConfig:
    """A config for one rectangle: the recursion serves it with blocks and sample at any
    size (min_seq_len 8), in torch ops."""
    return HyperAttentionConfig(seed=seed, backend="torch", min_seq_len=8, **fields)


def print_error_table(
    args: argparse.Namespace, columns: list[str], errors_of, seeds: int, caption: str = ""
) -> None:
    """Run the window through the model and print one row per captured layer of
    errors_of(q, k, v, scale) -> {column: error}."""
    model, ids = model_and_window(args)
    print(f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, {seeds} seeds")
    if caption:
        print(f"\n{caption}")
    print("\n| layer | " + " | ".join(columns) + " |")
    print("|---" * (1 + len(columns)) + "|")

    def report(layer, q, k, v, *, causal, scale):
        errors = errors_of(q, k, v, scale)
        print(f"| {layer} | " + " | ".join(f"{e:.4f}" for e in errors.values()) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)
