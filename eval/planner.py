"""A per-layer plan for a model: which layers run HyperAttention and in which mode, chosen
under budgets on both perplexity and needle retrieval, then checked on text and cases the
choice did not see.

    hf-hyper plan --model ./my-model --length 8192 --ppl-budget 0.01 --retrieval-budget 0.9
    hf-hyper retrieval --model ./my-model --plan plan-results/plan.json --patch-layers 0 plan

How it chooses:
1. Time: one attention call of the model's shape at --target-length per mode, and exact
   attention, on this machine (CUDA event medians; CPU times only order the modes).
2. Rank (--rank alone, the default): each layer HyperAttention can serve is patched alone
   in the cheapest mode and measured on the calibration windows and cases; the layers are
   ranked by the share of the budgets they use. A layer's attention error does not say
   what it costs the model, so --rank error (each layer's error on one window, as
   `hf-hyper diagnose`) is there for a quick search only.
3. Search: for each mode alone, and for the modes nested cheapest first, bisect for the
   most best-ranked layers whose calibration perplexity and retrieval keep the budgets.
   Every tried plan is measured, never predicted, and cached in --output-dir, so a rerun
   resumes.
4. Choose: of the plans that keep both budgets, the one of least modelled attention time
   (the sum of the servable layers' times at --target-length; layers HyperAttention does
   not serve, such as sliding-window ones, are the same in every plan and left out).
5. Validate: the unpatched model and the chosen plan on windows and cases the search did
   not see, beside what the search measured.

Outputs: plan.json (load it with --plan or hf_hyper.Plan.load; it records the budgets,
the times and both measurements), plan-search.json with every trial, plan-search.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig, Plan

from .bench_attention import planted_inputs
from .cache import ResultLog, run_key
from .chat import CHAT_MODES, chat_enabled
from .common import (
    JobError,
    command_line,
    job_main,
    markdown_table,
    output_dir,
    positive_int,
    today,
    write_json,
)
from .diagnose import measure_layers
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
from .plan_search import (
    EXACT,
    choose,
    keeps_budgets,
    layers_by_mode,
    modelled_ms,
    plan_key,
    rank_alone,
    search,
)
from .retrieval.run import answer, depths, rate_fields
from .retrieval.tasks import Case, build_case, check_tasks, score
from .texts import (
    add_text_arguments,
    load_documents,
    text_source,
    token_streams,
    window_prefix,
)
from .timing import environment, time_cuda
from .windows import Window, make_windows


def mode_configs(config: HyperAttentionConfig, tail: int) -> dict[str, HyperAttentionConfig]:
    """The modes a layer may run, from the job's HyperAttention options: fast (as given),
    fast+tail (its last `tail` queries exact) and accurate (per-query clusters and the
    tail, as HyperAttentionConfig.accurate)."""
    accurate = HyperAttentionConfig.accurate()
    return {
        "fast": config,
        "fast+tail": replace(config, exact_tail=tail),
        "accurate": replace(
            config,
            kmeans_iters=accurate.kmeans_iters,
            cluster_probes=accurate.cluster_probes,
            exact_tail=tail,
        ),
    }


MODES = ("fast", "fast+tail", "accurate")
RANKINGS = ("alone", "error")
# Validation cases start here, past any calibration seed: a case follows from its seed.
VALIDATION_SEED = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_text_arguments(p)
    p.add_argument(
        "--length", "--lengths", type=positive_int, default=8192,
        help="tokens per window and case (one length)",
    )  # fmt: skip
    p.add_argument(
        "--target-length", type=positive_int, default=None,
        help="the length the plan is for: its layer times are measured there (default: "
        "--length)",
    )  # fmt: skip
    p.add_argument(
        "--layer-times", default=None,
        help="a JSON file of ms per attention call at --target-length, {mode or 'exact': ms} "
        "(e.g. the layer-times.json of a plan run on the GPU the plan is for); default: "
        "measured here",
    )  # fmt: skip
    p.add_argument("--allow-beyond-max-positions", action="store_true")
    budgets = p.add_argument_group("budgets")
    budgets.add_argument(
        "--ppl-budget", type=float, default=0.01,
        help="largest relative perplexity increase over the unpatched model",
    )  # fmt: skip
    budgets.add_argument(
        "--retrieval-budget", type=float, default=0.9,
        help="least share of the unpatched model's retrieval hits kept, per task",
    )  # fmt: skip
    data = p.add_argument_group("calibration and validation")
    data.add_argument("--tasks", nargs="+", default=["passkey", "kv-number"])
    data.add_argument("--calibration-windows", type=positive_int, default=4)
    data.add_argument("--calibration-cases", type=positive_int, default=20, help="per task")
    data.add_argument("--validation-windows", type=positive_int, default=4)
    data.add_argument("--validation-cases", type=positive_int, default=100, help="per task")
    data.add_argument("--depths", type=positive_int, default=10, help="needle depths cycled")
    data.add_argument("--chat-template", choices=CHAT_MODES, default="auto")
    data.add_argument("--allow-repeat", action="store_true")
    modes = p.add_argument_group("modes")
    modes.add_argument(
        "--modes", nargs="+", choices=MODES, default=["fast", "fast+tail"],
        help="what a patched layer may run: fast (the HyperAttention options below), "
        "fast+tail (and its last --tail queries exact), accurate (per-query clusters and "
        "the tail; about exact attention's speed at 131k)",
    )  # fmt: skip
    modes.add_argument("--tail", type=positive_int, default=64, help="queries of the exact tail")
    modes.add_argument(
        "--rank", choices=RANKINGS, default="alone",
        help="how layers are ordered for the search: alone (each layer patched alone in the "
        "cheapest mode, measured on the calibration windows and cases: one trial a layer) "
        "or error (each layer's attention error on one window: fast, but a layer's error "
        "does not predict its cost to the model)",
    )  # fmt: skip
    add_hyper_arguments(p, patch_default=None)
    p.add_argument("--output-dir", default="plan-results")


def attention_shape(model) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the model's attention."""
    cfg = getattr(model.config, "text_config", None) or model.config
    heads = cfg.num_attention_heads
    kv_heads = (
        getattr(cfg, "num_key_value_heads", None)
        or getattr(cfg, "multi_query_group_num", None)  # ChatGLM
        or heads
    )
    dim = getattr(cfg, "head_dim", None) or getattr(cfg, "kv_channels", None)
    return heads, kv_heads, dim or cfg.hidden_size // heads


def layer_times(
    model, configs: dict[str, HyperAttentionConfig], length: int, repeats: int = 3
) -> dict[str, float]:
    """ms of one causal attention call of the model's shape at `length` tokens, per mode
    and for exact attention (PyTorch's SDPA), on the model's device."""
    param = next(model.parameters())
    return shape_times(attention_shape(model), param.dtype, param.device, configs, length, repeats)


def shape_times(
    shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
    configs: dict[str, HyperAttentionConfig], length: int, repeats: int = 3,
) -> dict[str, float]:  # fmt: skip
    """`layer_times` for an attention shape (query heads, key/value heads, head dim)."""
    heads, kv_heads, dim = shape
    q, k, v = planted_inputs(length, heads, kv_heads, dim, dtype, True, 0, device)
    calls: dict[str, Callable[[], Any]] = {
        EXACT: lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=heads != kv_heads
        )
    }
    for name, config in configs.items():
        calls[name] = lambda config=config: hf_hyper.hyper_attention(
            q, k, v, causal=True, config=config
        )
    times = {}
    with torch.no_grad():
        for name, call in calls.items():
            if torch.device(device).type == "cuda":
                times[name] = time_cuda(call, warmup=2, repeats=repeats).ms
            else:
                call()
                samples = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    call()
                    samples.append((time.perf_counter() - start) * 1e3)
                times[name] = statistics.median(samples)
    return times


def read_layer_times(path: str, modes: Sequence[str]) -> dict[str, float]:
    """--layer-times: ms for exact attention and every mode, as `layer_times` writes them."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JobError(f"--layer-times {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JobError(f"--layer-times {path} is not a JSON file ({err})") from None
    needed = [EXACT, *modes]
    if not isinstance(data, dict) or any(
        not isinstance(data.get(m), (int, float)) or not data[m] > 0 for m in needed
    ):
        raise JobError(
            f"--layer-times {path} must map each of {needed} to a time in ms > 0 (as the "
            "layer-times.json of a plan run writes it)"
        )
    return {m: float(data[m]) for m in needed}


class Trials:
    """Perplexity and retrieval of a model with an assignment {layer: mode} patched, on one
    set of windows and cases; each assignment measured once and cached in `log`."""

    def __init__(
        self, model, tokenizer, configs: dict[str, HyperAttentionConfig],
        windows: list[Window], cases: list[Case], log: ResultLog, stage: str,
    ) -> None:  # fmt: skip
        self.model, self.tokenizer, self.configs = model, tokenizer, configs
        self.windows, self.cases, self.stage = windows, cases, stage
        self.device = next(model.parameters()).device
        self.log = log
        self.done = {k: r for k, r in log.load().items() if r.get("stage") == stage}

    def __call__(self, assignment: dict[int, str]) -> dict[str, Any]:
        key = f"{self.stage}|{plan_key(assignment)}"
        if key not in self.done:
            self.done[key] = self._measure(assignment, key)
            self.log.append(self.done[key])
        return self.done[key]

    def _measure(self, assignment: dict[int, str], key: str) -> dict[str, Any]:
        from tqdm.auto import tqdm

        if assignment:
            layers = {layer: self.configs[mode] for layer, mode in assignment.items()}
            hf_hyper.patch(self.model, plan=Plan(layers))
        try:
            label = f"{self.stage}: {len(assignment)} layers" if assignment else self.stage
            bar = tqdm(total=len(self.windows) + len(self.cases), desc=label, leave=False)
            nll = mean_nll(self.model, self.windows, self.device, key, lambda: bar.update(1))
            marks: dict[str, list[bool]] = {}
            for case in self.cases:
                prediction, _ = answer(self.model, self.tokenizer, case, self.device)
                marks.setdefault(case.task, []).append(score(case.answers, prediction))
                bar.update(1)
            bar.close()
        finally:
            if assignment:
                hf_hyper.unpatch(self.model)
        result = {
            "key": key,
            "stage": self.stage,
            "assignment": {str(layer): mode for layer, mode in sorted(assignment.items())},
            "layers": len(assignment),
            "ppl": math.exp(nll),
            "retrieval": {task: rate_fields(m) for task, m in marks.items()},
        }
        where = f" ({layers_by_mode(assignment)})" if assignment else ""
        print(f"  {self.stage} {_describe(assignment)}{where}: {_outcome(result)}", flush=True)
        return result


def _describe(assignment: dict[int, str]) -> str:
    if not assignment:
        return "unpatched"
    counts: dict[str, int] = {}
    for mode in assignment.values():
        counts[mode] = counts.get(mode, 0) + 1
    return ", ".join(f"{n} {mode}" for mode, n in counts.items())


def _outcome(result: dict[str, Any]) -> str:
    hits = ", ".join(f"{task} {r['hits']}/{r['cases']}" for task, r in result["retrieval"].items())
    return f"perplexity {result['ppl']:.4f}" + (f"; {hits}" if hits else "")


def _build_cases(args, tasks, stream, tokenizer, chat, count, first_seed) -> list[Case]:
    spots = depths(args.depths)
    return [
        build_case(
            task,
            args.length,
            spots[i % len(spots)],
            first_seed + i,
            stream,
            tokenizer,
            chat,
            allow_repeat=args.allow_repeat,
        )  # fmt: skip
        for task in tasks
        for i in range(count)
    ]


def _ratio_text(result: dict[str, Any], base: dict[str, Any], task: str) -> str:
    r, b = result["retrieval"][task], base["retrieval"][task]
    return f"{r['hits']}/{r['cases']} {r['interval']} (unpatched {b['hits']}/{b['cases']})"


def summary_rows(
    calibration: tuple[dict, dict], validation: tuple[dict, dict], tasks: list[str]
) -> list[dict[str, str]]:
    """What the search measured beside what held-out windows and cases measure."""
    rows = []
    for stage, (base, plan) in (("calibration (search)", calibration),
                                ("validation (held out)", validation)):  # fmt: skip
        row = {
            "stage": stage,
            "ppl": f"{plan['ppl']:.4f} vs {base['ppl']:.4f} ({plan['ppl'] / base['ppl'] - 1:+.2%})",
        }
        for task in tasks:
            row[task] = _ratio_text(plan, base, task)
        rows.append(row)
    return rows


def _ranking_table(ranking: list[dict[str, Any]], tasks: list[str]) -> str:
    rows = [
        {"rank": r["rank"], "layer": r["layer"], "mode": r["mode"], "ppl": f"{r['ppl']:.4f}",
         "share": f"{r['budget_share']:.2f}"} | {t: r["retrieval"].get(t, "") for t in tasks}
        for r in ranking
    ]  # fmt: skip
    columns = [("rank", "rank"), ("layer", "layer"), ("mode", "alone in"), ("ppl", "perplexity")]
    columns += [(t, t) for t in tasks] + [("share", "share of the budgets")]
    return "Layers ranked by their measured effect, each patched alone:\n\n" + markdown_table(
        rows, columns
    )


def run(args: argparse.Namespace) -> Path:
    from accelerate import Accelerator

    tasks = check_tasks(args.tasks)
    if not args.ppl_budget >= 0:
        raise JobError(f"--ppl-budget must be >= 0 (a relative increase); got {args.ppl_budget}")
    if not 0 <= args.retrieval_budget <= 1:
        raise JobError(
            f"--retrieval-budget must be in [0, 1] (a share of the unpatched hits); got "
            f"{args.retrieval_budget}"
        )
    if args.per_document:
        raise JobError("plan joins the documents into one text: drop --per-document")
    modes = list(dict.fromkeys(args.modes))
    config = hyper_config(args)
    configs = {name: c for name, c in mode_configs(config, args.tail).items() if name in modes}
    require_approximation(config, args.length)
    given_times = read_layer_times(args.layer_times, modes) if args.layer_times else None
    accelerator = Accelerator(cpu=args.cpu)
    if accelerator.num_processes > 1:
        raise JobError("plan runs in one process (its trials depend on one another)")
    source = text_source(args)
    docs = load_documents(source)
    if not any(doc.text.strip() for doc in docs):
        raise JobError(f"the text ({source.describe()}) is empty: give --files or --dataset")
    model, tokenizer = load_model(args, accelerator.device)
    check_lengths([args.length], args, model)
    check_patchable(model)
    total = num_layers(model)
    model_type = model.config.model_type
    streams = token_streams(tokenizer, docs, False)
    prefix = window_prefix(tokenizer)
    wanted = args.calibration_windows + args.validation_windows
    windows = make_windows(streams, args.length, None, wanted, prefix)
    if len(windows) < wanted:
        raise JobError(
            f"the text gives {len(windows)} windows of {args.length} tokens; the plan needs "
            f"{wanted} (--calibration-windows + --validation-windows): give more text or "
            "fewer windows"
        )
    chat = chat_enabled(tokenizer, args.chat_template)
    stream = streams[0][1]
    cal_cases = _build_cases(args, tasks, stream, tokenizer, chat, args.calibration_cases, 0)
    val_cases = _build_cases(
        args, tasks, stream, tokenizer, chat, args.validation_cases, VALIDATION_SEED
    )
    out = output_dir(args.output_dir)  # once the input is known good: no empty folders
    key = run_key(dict(model=args.model, dtype=args.dtype, text=source.describe(),
                       length=args.length, windows=[w.id for w in windows], chat=chat,
                       configs={n: c.to_dict() for n, c in configs.items()},
                       cases=[c.key for c in cal_cases + val_cases]))  # fmt: skip
    log = ResultLog(out / f"trials-{key}", 0)
    calibration = Trials(model, tokenizer, configs, windows[: args.calibration_windows],
                         cal_cases, log, "calibration")  # fmt: skip
    validation = Trials(model, tokenizer, configs, windows[args.calibration_windows :],
                        val_cases, log, "validation")  # fmt: skip

    device = next(model.parameters()).device
    ids = torch.tensor(windows[0].ids, device=device)[None]
    ranking_config = replace(config, cluster_probes=0)  # the diagnostics model shared blocks
    _, layer_rows, served = measure_layers(model, ids, ranking_config, list(range(total)),
                                           args.length)  # fmt: skip
    target = args.target_length or args.length
    if given_times is not None:
        times, timed_on = given_times, args.layer_times
    else:
        timed_on = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"timing one attention call per mode at {target} tokens on {timed_on}", flush=True)
        try:
            times = layer_times(model, configs, target)
        except torch.OutOfMemoryError:
            raise JobError(
                f"timing one attention call at --target-length {target} ran out of memory "
                f"on {timed_on}: give a shorter --target-length, or times measured elsewhere "
                "with --layer-times"
            ) from None
        write_json(out / "layer-times.json", times)
    slower = [m for m in modes if times[m] >= times[EXACT]]
    for mode in slower:
        print(
            f"note: {mode} ({times[mode]:.2f} ms) is not faster than exact attention "
            f"({times[EXACT]:.2f} ms) at {target} tokens on {timed_on}: left out of the plan",
            flush=True,
        )
    modes_by_cost = sorted((m for m in modes if m not in slower), key=lambda m: times[m])
    if not modes_by_cost:
        raise JobError(
            f"no mode is faster than exact attention at {target} tokens on {timed_on}, so no "
            "plan can pay: plan for a longer --target-length, on the GPU it is for, or give "
            "that GPU's times with --layer-times"
        )

    base = calibration({})
    notes = []
    for task, r in base["retrieval"].items():
        if r["hits"] == 0:
            notes.append(
                f"note: unpatched, the model found none of the {r['cases']} {task} needles at "
                f"{args.length} tokens, so the retrieval budget constrains nothing for {task}; "
                "plan with a model that can do the task"
            )
    for note in notes:
        print(note, flush=True)

    def fits(assignment: dict[int, str]) -> bool:
        if not assignment:
            return True
        return keeps_budgets(calibration(assignment), base, args.ppl_budget,
                             args.retrieval_budget)  # fmt: skip

    if args.rank == "alone":
        print(f"ranking {len(served)} layers, each patched alone ({modes_by_cost[0]})", flush=True)
        ranking = rank_alone(calibration, base, served, modes_by_cost[0], args.ppl_budget,
                             args.retrieval_budget)  # fmt: skip
    else:
        ranking = sorted(layer_rows, key=lambda r: r["rank"])
    ranked = [r["layer"] for r in ranking]
    candidates = search(fits, ranked, modes_by_cost)
    chosen = choose(candidates, served, times)
    trials = [r for r in calibration.done.values()]
    payload: dict[str, Any] = {
        "job": "plan",
        "command": command_line("plan"),
        "date": today(),
        "environment": environment(),
        "model": args.model,
        "model_type": model_type,
        "dtype": args.dtype,
        "num_layers": total,
        "text": source.describe(),
        "length": args.length,
        "target_length": target,
        "budgets": {"ppl": args.ppl_budget, "retrieval": args.retrieval_budget},
        "modes": {name: c.to_dict() for name, c in configs.items()},
        "layer_ms": times,
        "timed_on": timed_on,
        "rank": args.rank,
        "ranking": ranking,
        "layer_errors": layer_rows,
        "served_layers": served,
        "unserved_layers": sorted(set(range(total)) - set(served)),
        "notes": notes,
        "trials": trials,
        "candidates": [
            {
                "assignment": {str(k): v for k, v in sorted(c.items())},
                "layers": len(c),
                "modelled_ms": modelled_ms(c, served, times),
            }
            for c in candidates
        ],  # fmt: skip
    }
    trial_columns = [
        ("key", "layers patched, by mode"),
        ("layers", "layers"),
        ("ppl", "perplexity"),
    ]
    trial_rows = [
        {
            "key": layers_by_mode({int(i): m for i, m in r["assignment"].items()}),
            "layers": r["layers"],
            "ppl": f"{r['ppl']:.4f}",
        }
        | {t: f"{x['hits']}/{x['cases']}" for t, x in r["retrieval"].items()}
        for r in trials
    ]
    trial_columns += [(t, t) for t in tasks]
    search_table = "Trials on the calibration windows and cases:\n\n" + markdown_table(
        trial_rows, trial_columns
    )
    if args.rank == "alone":
        search_table = _ranking_table(ranking, tasks) + "\n" + search_table
    if chosen is None:
        write_json(out / "plan-search.json", payload)
        (out / "plan-search.md").write_text(search_table)
        print(search_table)
        raise JobError(
            f"no layer keeps both budgets (perplexity +{args.ppl_budget:.1%}, retrieval "
            f"{args.retrieval_budget:.0%} of unpatched); the trials are in {out}: loosen "
            "a budget or add a more accurate mode (--modes ... accurate)"
        )
    val_base, val_plan = validation({}), validation(chosen)
    rows = summary_rows((base, calibration(chosen)), (val_base, val_plan), tasks)
    all_exact = modelled_ms({}, served, times)
    payload |= {
        "plan": {str(k): v for k, v in sorted(chosen.items())},
        "modelled_ms": modelled_ms(chosen, served, times),
        "exact_ms": all_exact,
        "calibration": {"unpatched": base, "plan": calibration(chosen)},
        "validation": {"unpatched": val_base, "plan": val_plan},
        "rows": rows,
    }
    plan = Plan(
        {layer: configs[mode] for layer, mode in chosen.items()},
        model_type=model_type,
        num_layers=total,
        info={k: payload[k] for k in ("model", "date", "length", "target_length", "budgets",
                                      "layer_ms", "timed_on", "modelled_ms", "exact_ms",
                                      "calibration", "validation", "command")}
        | {"modes": {str(k): v for k, v in sorted(chosen.items())}},
    )  # fmt: skip
    plan.save(out / "plan.json")
    columns = [("stage", "measured on"), ("ppl", "perplexity vs unpatched")]
    columns += [(t, f"{t} hits (95% interval)") for t in tasks]
    speed = all_exact / payload["modelled_ms"]
    table = (
        f"Plan for {model_type} ({total} layers): {_describe(chosen)} of {total} layers "
        f"({layers_by_mode(chosen)})\nmodelled attention time at {target} tokens of the "
        f"{len(served)} layers HyperAttention can serve: {payload['modelled_ms']:.1f} ms "
        f"against {all_exact:.1f} ms exact ({speed:.2f}x, times from {timed_on})\n\n"
        + markdown_table(rows, columns)
        + "\n"
        + search_table
    )
    write_json(out / "plan-search.json", payload)
    (out / "plan-search.md").write_text(table)
    print(table)
    print(f"plan: {out / 'plan.json'} (use it with --plan); the search: {out}/plan-search.*")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return job_main("hf-hyper plan", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
