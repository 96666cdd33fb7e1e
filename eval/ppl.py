"""Long-context perplexity of a causal LM, unpatched and with HyperAttention in the last
k layers, in one run (the model is loaded once and patched / unpatched in between).

    hf-hyper ppl --model meta-llama/Llama-2-7b-hf --lengths 4096 16384 --patch-layers 0 16 all
    accelerate launch -m hf_hyper.eval.ppl --model ... --lengths 32768   # data parallel

Perplexity = exp(token-weighted mean NLL in nats). A NaN or inf window is an error that
names the window, never silently dropped. Each finished window is appended to a cache
in --output-dir; re-running the same command skips the windows already done. After
each setting the report of the settings finished so far is written, so a run cut short
still leaves one.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hf_hyper import HyperAttentionConfig

from .cache import ResultLog, run_key
from .common import (
    JobError,
    command_line,
    interim_note,
    job_main,
    markdown_table,
    output_dir,
    positive_int,
    release_processes,
    report_after_setting,
    save_results,
    today,
)
from .models import (
    DEFAULT_LENGTHS,
    add_hyper_arguments,
    add_model_arguments,
    check_lengths,
    check_patch_values,
    check_patchable,
    default_lengths,
    hyper_config,
    load_model,
    num_layers,
    parse_patch_settings,
    patched,
)
from .nll import score_window
from .plots import plot_ppl
from .texts import (
    Document,
    add_text_arguments,
    load_documents,
    text_source,
    token_streams,
    window_prefix,
)
from .timing import environment
from .windows import Window, make_windows

COLUMNS = [
    ("patched_layers", "patched layers"),
    ("length", "length"),
    ("windows", "windows"),
    ("tokens", "scored tokens"),
    ("nll", "mean NLL"),
    ("ppl", "perplexity"),
    ("vs_unpatched", "vs unpatched"),
    ("attention", "attention"),
]


def with_change(rows: list[dict]) -> list[dict]:
    """rows with `vs_unpatched`: the relative change of perplexity from the unpatched
    row of the same length (None where the run has none)."""
    base = {r["length"]: r["ppl"] for r in rows if r["layer_count"] == 0}

    def change(row: dict) -> float | None:
        return row["ppl"] / base[row["length"]] - 1 if row["length"] in base else None

    return [dict(row, vs_unpatched=change(row)) for row in rows]


def ppl_table(rows: list[dict]) -> str:
    """The markdown table: perplexity to 4 decimals and its change in percent, which
    tell settings apart where they differ by a fraction of a percent."""
    shown = [
        dict(
            row,
            ppl=f"{row['ppl']:.4f}",
            vs_unpatched=None if row["vs_unpatched"] is None else f"{row['vs_unpatched']:+.2%}",
        )  # fmt: skip
        for row in rows
    ]
    return markdown_table(shown, COLUMNS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_text_arguments(p)
    win = p.add_argument_group("windows")
    win.add_argument(
        "--lengths", type=positive_int, nargs="+", default=None,
        help=f"window lengths in tokens (default: {' '.join(map(str, DEFAULT_LENGTHS))}, those "
        "the model's positions reach: exact at the first, HyperAttention at the second)",
    )  # fmt: skip
    win.add_argument("--stride", type=int, default=None, help="sliding windows (default: none)")
    win.add_argument(
        "--max-windows", type=positive_int, default=None, help="per length (default: all)"
    )
    win.add_argument("--allow-beyond-max-positions", action="store_true")
    win.add_argument(
        "--no-warmup", action="store_true",
        help="on a GPU, skip the untimed forward per setting and length that compiles kernels "
        "before throughput is timed",
    )  # fmt: skip
    add_hyper_arguments(p, patch_default=["0", "all"])
    p.add_argument("--output-dir", default="ppl-results")


def _attention_kind(count: int, length: int, hyper) -> str:
    """What the patched layers of a row ran: HyperAttention, or exact attention because
    every call was short (a prompt of `length` tokens makes calls of that length)."""
    if not count:
        return "exact (unpatched)"
    if hyper.runs_exact(length, True):
        return f"exact (length <= {hyper.exact_query_len(True)})"
    return "HyperAttention"


def _throughput(accelerator, tokens: int, seconds: float) -> dict:
    """Tokens this run pushed through the model (every process), per wall-clock second
    from the first window (after the warm-up) to the last process finishing; resumed
    work is not counted."""
    import torch

    total = accelerator.reduce(torch.tensor([tokens], device=accelerator.device), "sum")
    tokens = int(total.item())
    return {"tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}  # fmt: skip


def _warm_up(model, settings, windows: dict, hyper, device: torch.device) -> None:
    """One unscored forward per patch setting and length, so one-off costs (kernel
    compilation, autotuning, allocator growth) stay out of the timed throughput. The
    results never depend on it."""
    for _, count in settings:
        with patched(model, count, hyper), torch.no_grad():
            for wins in windows.values():
                if wins:
                    ids = torch.tensor(wins[0].ids, device=device)[None]
                    model.get_decoder()(input_ids=ids, use_cache=False)


def run(args: argparse.Namespace) -> Path | None:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=args.cpu)
    if args.device_map and accelerator.num_processes > 1:
        raise JobError("--device-map shards one model copy: run it in a single process")
    check_patch_values(args.patch_layers, args.plan)
    hyper = hyper_config(args)
    source = text_source(args)
    docs = load_documents(source)
    model, tokenizer = load_model(args, accelerator.device)
    if args.lengths is None:
        args.lengths = default_lengths(model)
    check_lengths(args.lengths, args, model)
    layer_total = num_layers(model)
    settings = parse_patch_settings(args.patch_layers, layer_total, args.plan, model)
    if any(count for _, count in settings):
        check_patchable(model)
    streams = token_streams(tokenizer, docs, args.per_document)
    prefix = window_prefix(tokenizer)
    windows = {
        n: make_windows(streams, n, args.stride, args.max_windows, prefix) for n in args.lengths
    }
    key = run_key(
        dict(model=args.model, dtype=args.dtype, text=source.describe(), docs=len(docs),
             per_document=args.per_document, stride=args.stride, config=hyper.to_dict(),
             prefix=list(prefix))
    )  # fmt: skip
    out = output_dir(args.output_dir)  # once the input is known good: no empty folders
    cache = ResultLog(out / f"cache-{key}", accelerator.process_index)
    done = cache.load()
    rank, world = accelerator.process_index, accelerator.num_processes

    mine_all = [w for wins in windows.values() for w in wins[rank::world]]
    todo = any(f"{label}|{w.id}" not in done for label, _ in settings for w in mine_all)
    every_window = [w for wins in windows.values() for w in wins]
    planned = [f"{label}|{w.id}" for label, _ in settings for w in every_window]
    resumed = sum(key in done for key in planned)
    if resumed and accelerator.is_main_process:
        print(
            f"resuming: {resumed} of {len(planned)} windows from {cache.directory}; "
            f"computing {len(planned) - resumed}",
            flush=True,
        )
    if todo and not args.no_warmup and accelerator.device.type == "cuda":
        _warm_up(model, settings, windows, hyper, accelerator.device)
    report = dict(
        args=args, out=out, hyper=hyper, windows=windows, docs=docs, streams=streams,
        prefix=prefix, source=source.describe(), layer_total=layer_total, world=world,
        resumed=resumed,
    )  # fmt: skip

    def interim(finished: list, left: list) -> None:
        write_report(cache.load(), finished, left, None, **report)

    started, computed = time.perf_counter(), 0
    for index, (label, count) in enumerate(settings):
        ran = 0
        with patched(model, count, hyper):
            for length, wins in windows.items():
                mine = [w for w in wins[rank::world] if f"{label}|{w.id}" not in done]
                desc = f"patched {label:>3} len {length}"
                for window in tqdm(mine, desc=desc, disable=not accelerator.is_main_process):
                    nll, scored = score_window(model, window, accelerator.device, label)
                    cache.append(dict(key=f"{label}|{window.id}", nll=nll, tokens=scored))
                    computed += len(window.ids)
                    ran += 1
        report_after_setting(accelerator, ran, settings, index, interim)
    accelerator.wait_for_everyone()
    throughput = _throughput(accelerator, computed, time.perf_counter() - started)
    if not accelerator.is_main_process:
        release_processes()
        return None
    write_report(cache.load(), settings, [], throughput, **report)
    release_processes()
    return out


def write_report(
    done: dict[str, dict], settings: list[tuple[str, int]], left: list[tuple[str, int]],
    throughput: dict[str, Any] | None, *, args: argparse.Namespace, out: Path,
    hyper: HyperAttentionConfig, windows: dict[int, list[Window]], docs: list[Document],
    streams: list, prefix: tuple[int, ...], source: str, layer_total: int, world: int,
    resumed: int,
) -> None:  # fmt: skip
    """ppl.{json,md,png} for the finished `settings` (their windows in `done`); `left`: the
    settings still to run, named in the report (empty: the run is whole, with its
    throughput)."""
    rows = []
    for label, count in settings:
        for length, wins in windows.items():
            records = [done[f"{label}|{w.id}"] for w in wins]  # fixed order: same sums
            nll = math.fsum(r["nll"] for r in records)
            tokens = sum(r["tokens"] for r in records)
            rows.append(
                dict(patched_layers=label, layer_count=count, length=length,
                     windows=len(records), tokens=tokens, nll=nll / tokens,
                     ppl=math.exp(nll / tokens), attention=_attention_kind(count, length, hyper))
            )  # fmt: skip
    if not left and any(
        row["attention"].startswith("exact") and row["layer_count"] for row in rows
    ):
        print(
            f"note: at lengths <= {hyper.exact_query_len(True)} every call is short enough to "
            "run exact attention (min_seq_len / exact_up_to), so those patched rows equal "
            "the unpatched ones",
            flush=True,
        )
    payload = {
        "job": "ppl",
        "command": command_line("ppl"),
        "date": today(),
        "environment": environment(),
        "processes": world,
        "throughput": throughput,  # this run's work only (None: an interim report)
        "windows_from_cache": resumed,
        "model": args.model,
        "dtype": args.dtype,
        "num_layers": layer_total,
        "text": source,
        "documents": [d.id for d in docs],
        "joined": not args.per_document,
        "stream_tokens": sum(len(ids) for _, ids in streams),
        "stride": args.stride,
        "window_prefix": list(prefix),
        "hyper_config": hyper.to_dict(),
        "windows": {str(n): [w.id for w in wins] for n, wins in windows.items()},
        "settings_left": [label for label, _ in left],
        "rows": with_change(rows),
    }
    table = ppl_table(payload["rows"])
    if left:
        table += interim_note(left, "windows")
    # the figure only for the whole run: an interim one per setting would cost more
    save_results(out, "ppl", payload, COLUMNS, None if left else plot_ppl, table)


def main(argv: Sequence[str] | None = None) -> int:
    return job_main("hf-hyper ppl", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
